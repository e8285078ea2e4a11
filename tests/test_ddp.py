"""Reversible backprop under DistributedDataParallel (2 gloo processes on CPU)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from conftest import tiny_input, tiny_model

WORLD = 2


def _model():
    torch.manual_seed(0)
    return tiny_model("mvit", depth=6, drop_path_rate=0.0).double().train()


def _batch():
    return tiny_input(_model(), batch=8, dtype=torch.float64, seed=1)


def _loss(out):
    return out.square().mean()


def _worker(rank, init_file, out_dir, accumulate):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = DistributedDataParallel(_model(), find_unused_parameters=False)
    local = _batch().chunk(WORLD)[rank]
    if accumulate:  # two micro-batches, gradients synchronised only on the second
        first, second = local.chunk(2)
        with model.no_sync():
            (_loss(model(first)) / 2).backward()
        (_loss(model(second)) / 2).backward()
    else:
        _loss(model(local)).backward()
    grads = {n: p.grad for n, p in model.module.named_parameters()}
    torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    dist.destroy_process_group()


def _run(tmp_path, accumulate):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), accumulate), nprocs=WORLD)
    return [torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(WORLD)]


def _reference():
    model = _model()
    _loss(model(_batch())).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    ref = _reference()
    for grads in _run(tmp_path, accumulate=False):
        assert grads.keys() == ref.keys()
        for name in ref:
            assert torch.allclose(grads[name], ref[name], rtol=1e-9, atol=1e-14), name


def test_ddp_no_sync_accumulation_equals_full_batch(tmp_path):
    ref = _reference()
    for grads in _run(tmp_path, accumulate=True):
        for name in ref:
            assert torch.allclose(grads[name], ref[name], rtol=1e-9, atol=1e-14), name


def _unused_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = DistributedDataParallel(_model(), find_unused_parameters=True)
    _loss(model(_batch().chunk(WORLD)[rank])).backward()
    torch.save({n: p.grad for n, p in model.module.named_parameters()},
               os.path.join(out_dir, f"grads{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_find_unused_parameters_true_equals_full_batch(tmp_path):
    """The reversible blocks' parameters are inputs of their autograd Functions, so DDP's
    graph traversal finds them: ``find_unused_parameters=True`` works too."""
    ref = _reference()
    mp.spawn(_unused_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    for r in range(WORLD):
        grads = torch.load(tmp_path / f"grads{r}.pt", weights_only=True)
        for name in ref:
            assert torch.allclose(grads[name], ref[name], rtol=1e-9, atol=1e-14), name


def _accumulation_memory_worker(rank, init_file, out_dir):
    from test_memory import _narrow_vit_b, accumulating_peak

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(rank))
    peaks = {}
    for name, depth, reversible in (("rev4", 4, True), ("rev16", 16, True), ("twin16", 16, False)):
        model = DistributedDataParallel(_narrow_vit_b(depth, reversible))
        with model.no_sync():  # the second micro-batch of an accumulation: .grad is set
            peaks[name] = accumulating_peak(model, x)
    torch.save(peaks, os.path.join(out_dir, f"peaks{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_no_sync_accumulation_memory_is_flat_in_depth(tmp_path):
    mp.spawn(_accumulation_memory_worker, args=(str(tmp_path / "init"), str(tmp_path)),
             nprocs=WORLD)
    for r in range(WORLD):
        peaks = torch.load(tmp_path / f"peaks{r}.pt", weights_only=True)
        assert peaks["rev16"] <= 1.15 * peaks["rev4"], peaks
        assert peaks["rev16"] <= 0.35 * peaks["twin16"], peaks
