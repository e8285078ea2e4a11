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
