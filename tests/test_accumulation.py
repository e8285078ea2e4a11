"""Gradient accumulation and DDP parity of both tools' training steps, on a tiny Rev-MViT.

The steps under test are the tools' own: ``revvideo.engine.ClipTrainer`` (video, float64)
and ``revdet.engine.AccumTrainer`` (Mask R-CNN without masks, float32). The reference is
always one process taking the whole batch of ``B`` at once (``ACCUM_ITER`` 1):

* ``ACCUM_ITER`` 4 in one process gives the same gradient and parameters;
* 2 gloo processes with ``ACCUM_ITER`` 4 (micro-batches of B / 8) give the single-process
  gradient of the whole batch and the same parameters, over two SGD-momentum steps;
* 2 gloo processes without accumulation, under ``find_unused_parameters=True``, give the
  same two steps as well, so they match the ``False`` run (reversible backprop hands DDP
  every gradient through autograd).

Detection losses are exact per-image means only with a fixed number of samples per
image, so the detector takes every anchor and every proposal (no random subsampling) and
has no mask head (Mask R-CNN averages its mask loss over the batch's positive boxes).
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from conftest import tiny_model

WORLD, BATCH, STEPS = 2, 8, 2


# ------------------------------------------------------------------------------ video
class Video:
    tol = 1e-9  # float64

    @staticmethod
    def model():
        torch.manual_seed(0)
        return tiny_model("mvit_video", depth=6, drop_path_rate=0.0).double().train()

    @staticmethod
    def batches():
        g = torch.Generator().manual_seed(1)
        return [{"video": torch.randn(BATCH, 3, 4, 32, 32, generator=g, dtype=torch.float64),
                 "label": torch.randint(0, 5, (BATCH,), generator=g)} for _ in range(STEPS)]

    @staticmethod
    def shard(batch, rank, world):
        n = BATCH // world
        return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}

    @staticmethod
    def trainer(model, loader, optimizer, accum_iter):
        from revvideo.engine import ClipTrainer
        from revvideo.transforms import BatchMix

        mix = BatchMix(num_classes=5, enable=False, label_smoothing=0.1)
        return ClipTrainer(model, loader, optimizer, mix, accum_iter)


# -------------------------------------------------------------------------- detection
class Detection:
    tol = 1e-6  # float32: summation order differs with the micro-batches

    @staticmethod
    def model():
        from detectron2.modeling import build_model
        from revdet_tiny import DETERMINISTIC_LOSS, tiny_cfg

        torch.manual_seed(0)
        return build_model(tiny_cfg("build_rev_mvit_fpn_backbone", *DETERMINISTIC_LOSS)).train()

    @staticmethod
    def batches():
        from revdet_tiny import tiny_batch

        return [tiny_batch(BATCH, seed=1 + step) for step in range(STEPS)]

    @staticmethod
    def shard(batch, rank, world):
        n = BATCH // world
        return batch[rank * n:(rank + 1) * n]

    @staticmethod
    def trainer(model, loader, optimizer, accum_iter):
        from revdet.engine import AccumTrainer

        return AccumTrainer(model, loader, optimizer, accum_iter)


TOOLS = {"video": Video, "det": Detection}


# ----------------------------------------------------------------------------- running
def train(tool, model, loader, accum_iter):
    """``STEPS`` optimizer steps (SGD with momentum); after each, the gradient and the
    parameters of the unwrapped model."""
    from detectron2.utils.events import EventStorage

    net = model.module if isinstance(model, DistributedDataParallel) else model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    trainer = tool.trainer(model, loader, optimizer, accum_iter)
    snapshots = []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(STEPS):
            trainer.iter = it
            trainer.run_step()
            snapshots.append({"grad": {n: p.grad.clone() for n, p in net.named_parameters()},
                              "param": {n: p.detach().clone() for n, p in net.named_parameters()}})
    return snapshots


def _worker(rank, tool_name, init_file, out_dir, accum_iter, find_unused):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    tool = TOOLS[tool_name]
    model = DistributedDataParallel(tool.model(), broadcast_buffers=False,
                                    find_unused_parameters=find_unused)
    loader = [tool.shard(b, rank, WORLD) for b in tool.batches()]
    torch.save(train(tool, model, loader, accum_iter), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def train_ddp(tool_name, tmp_path, accum_iter, find_unused=False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(tool_name, str(tmp_path / "init"), str(tmp_path), accum_iter, find_unused),
             nprocs=WORLD)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference():
    """One process, the whole batch at once, per tool (computed once)."""
    cache = {}

    def get(tool_name):
        if tool_name not in cache:
            tool = TOOLS[tool_name]
            cache[tool_name] = train(tool, tool.model(), tool.batches(), accum_iter=1)
        return cache[tool_name]

    return get


def assert_same(got, ref, tol):
    """Relative error of the whole vector <= ``tol``; each tensor close at that scale."""
    names = list(ref)
    a = torch.cat([got[n].flatten() for n in names])
    b = torch.cat([ref[n].flatten() for n in names])
    assert ((a - b).norm() / b.norm()).item() <= tol
    scale = b.abs().max().item()
    for n in names:  # per tensor too, relative to the largest entry (some gradients are ~0)
        torch.testing.assert_close(got[n], ref[n], rtol=tol * 10, atol=tol * scale, msg=n)


def assert_matches(snapshots, ref, tol):
    assert len(snapshots) == len(ref) == STEPS
    for got, want in zip(snapshots, ref):
        assert_same(got["grad"], want["grad"], tol)
        assert_same(got["param"], want["param"], tol)
    first, last = ref[0]["param"], ref[-1]["param"]
    assert max((last[n] - first[n]).abs().max().item() for n in first) > 1e-4  # steps do move


@pytest.mark.parametrize("tool_name", list(TOOLS))
def test_accumulation_equals_the_whole_batch(tool_name, reference):
    tool = TOOLS[tool_name]
    snapshots = train(tool, tool.model(), tool.batches(), accum_iter=4)
    assert_matches(snapshots, reference(tool_name), tool.tol)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """2 gloo processes per tool: accumulating (find_unused_parameters=False), and not
    accumulating with find_unused_parameters=True (each computed once)."""
    cache = {}

    def get(tool_name, accum_iter, find_unused):
        key = (tool_name, accum_iter, find_unused)
        if key not in cache:
            cache[key] = train_ddp(tool_name, tmp_path_factory.mktemp("ddp"), accum_iter, find_unused)
        return cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("tool_name", list(TOOLS))
def test_two_processes_accumulating_equal_one_process_whole_batch(tool_name, reference, ddp_runs):
    ref = reference(tool_name)
    for snapshots in ddp_runs(tool_name, accum_iter=4, find_unused=False):
        assert_matches(snapshots, ref, TOOLS[tool_name].tol)


@pytest.mark.slow
@pytest.mark.parametrize("tool_name", list(TOOLS))
def test_ddp_find_unused_parameters_true_matches_false(tool_name, reference, ddp_runs):
    """Two steps without accumulation under find_unused_parameters=True equal one process
    with the whole batch and the find_unused_parameters=False run."""
    tol = TOOLS[tool_name].tol
    unused = ddp_runs(tool_name, accum_iter=1, find_unused=True)
    plain = ddp_runs(tool_name, accum_iter=4, find_unused=False)
    for a, b in zip(unused, plain):
        assert_matches(a, reference(tool_name), tol)
        assert_matches(a, b, tol)
