"""What the benchmark scripts (``tools/benchmark_*.py``) and the memory tests measure with.

Memory: the bytes autograd keeps for backward (``saved_tensor_meter``), the exact peak of
live tensors (``LiveTensorPeak``) and a step's peak resident memory (``step_peak_mb``), all
measured the same way for every number in the README (its "Memory and speed" section). Process:
each configuration runs in a fresh worker process (``run_fresh``) that prints one JSON line.
Results: ratios paired within the same rounds (``paired_ratios``) and markdown tables
(``markdown_table``). The scripts import it as ``measure`` (they run from ``tools/``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

# As the train tools do (revvision/train_*.py): idle OpenMP threads sleep instead of spinning,
# so a step is timed as a user runs it; spinning makes small ops (a micro-batch of 1) several
# times slower on a shared CPU. Set before torch starts OpenMP; the workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from revvision.process_memory import reset_peak_rss, status_mb  # noqa: E402


class SavedTensorMeter:
    """Sum of the distinct storages saved for backward (``total_bytes``) while active.

    Meters that share ``seen`` (a set of storage addresses) count a storage only in the
    first of them that sees it; the innermost active ``saved_tensors_hooks`` packs, so a
    meter entered around a submodule takes that submodule's tensors from an outer one.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = (), seen: Optional[set] = None):
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.seen = set() if seen is None else seen
        self.storages = {}

    def _pack(self, tensor):
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
            return tensor
        key = storage.data_ptr()
        if key not in self.excluded and key not in self.seen:
            self.seen.add(key)
            self.storages[key] = storage.nbytes()
        return tensor

    def hooks(self):
        """The ``saved_tensors_hooks`` context that feeds this meter."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def total_bytes(self) -> int:
        return sum(self.storages.values())


@contextlib.contextmanager
def saved_tensor_meter(exclude: Iterable[torch.Tensor] = ()) -> Iterator[SavedTensorMeter]:
    """``with saved_tensor_meter(model.parameters()) as m: loss = model(x)...``; then read
    ``m.total_bytes``.

    Covers everything autograd stores, including what reversible segments save; each
    storage is counted once however many tensors view it; storages of ``exclude`` (usually
    the parameters, which are not activations) are not counted.
    """
    meter = SavedTensorMeter(exclude)
    with meter.hooks():
        yield meter


class LiveTensorPeak(TorchDispatchMode):
    """Exact peak of the tensor memory allocated while active (``peak_bytes``), any device.

    Every storage an operator freshly allocates is counted until it is freed (a weak
    reference tells); views, in-place results and tensors that existed before the mode was
    entered (parameters, ``.grad``, the input) are not. So ``with LiveTensorPeak() as m:
    loss = model(x); loss.backward()`` measures activations plus backward's temporaries
    above the model and its gradients, free of allocator caching and heap fragmentation.
    Operators' internal workspaces that never become tensors are not seen.
    """

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._tracked = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live_bytes -= nbytes

    def _track(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
            return
        key = id(storage)
        if key in self._tracked:
            return
        self._tracked.add(key)
        self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):  # fresh outputs
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self._track(leaf)
        return out


# For peak measurements that count live tensors, not allocator history: glibc serves
# allocations >= 64 KiB by mmap and unmaps them when freed, but by default it raises that
# threshold up to 32 MiB as large blocks are freed and then recycles freed blocks from its
# heap, whose resident pages also count fragmentation. Only an environment variable fixes
# the threshold from process start, so benchmarks pass this to a fresh process.
MMAP_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def release_heap() -> None:
    """Hand memory freed earlier back to the OS, so the RSS before a measured step holds
    only live data and the step cannot hide its peak in retained free pages."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def step_peak_mb(step: Callable[[], object]) -> Optional[float]:
    """Peak resident memory of ``step()`` above the RSS just before it, in MiB (heap
    released first, ``VmHWM`` reset); None where ``/proc`` cannot tell (off Linux)."""
    release_heap()
    if not reset_peak_rss():
        return None
    before = status_mb("VmRSS")
    step()
    hwm = status_mb("VmHWM")
    return None if before is None or hwm is None else hwm - before


class Checkpointed(nn.Module):
    """A ``(x, thw)`` layer recomputed in backward (non-reentrant ``torch.utils.checkpoint``)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, thw):
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.layer, x, thw, use_reentrant=False)
        return self.layer(x, thw)


def checkpoint_layers(model: nn.Module, select: Callable[[nn.Module], bool]) -> int:
    """Wrap the selected non-reversible layers of a ``backbones.MViT`` in ``Checkpointed``
    (activation checkpointing, for comparisons). Returns how many were wrapped."""
    count = 0
    for i, layer in enumerate(model.layers):
        if select(layer):
            model.layers[i] = Checkpointed(layer)
            count += 1
    return count


# ------------------------------------------------------------------ worker processes
def run_fresh(script: str, flags: Sequence[object], env: Optional[Dict[str, str]] = None) -> dict:
    """Run ``script`` with ``flags`` in a fresh Python process (``env`` added to this
    one's) and return the JSON object of the last line it prints that starts with ``{``.
    A fresh process per configuration keeps one's allocations out of another's peak."""
    cmd = [sys.executable, os.path.abspath(script), *map(str, flags)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{os.path.basename(script)} {' '.join(map(str, flags))}: "
                           f"exit code {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def rotated(items: Sequence[Any], r: int) -> List[Any]:
    """``items`` in the order of round ``r``: started ``r`` places later, wrapping around."""
    shift = r % len(items)
    return list(items[shift:]) + list(items[:shift])


def time_rounds(step: Callable[[Any], object], settings: Sequence[Any], rounds: int,
                per: int = 1) -> Dict[Any, List[float]]:
    """Seconds of ``step(n)`` divided by ``per``, for every ``n`` in ``settings`` back to back
    in each of ``rounds`` rounds: ``{n: [one per round]}``, pairs for ``paired_ratios``. The
    order rotates every round, so no setting always runs right after the same other one."""
    times: Dict[Any, List[float]] = {n: [] for n in settings}
    for r in range(rounds):
        for n in rotated(settings, r):
            start = time.perf_counter()
            step(n)
            times[n].append((time.perf_counter() - start) / per)
    return times


def accumulated_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Sequence,
                     accum: int, forward: Callable) -> None:
    """One training step without the update, as the tools run it: fresh gradients, then
    forward + backward of ``batch`` in ``accum`` micro-batches (``backbones.training``)."""
    from backbones.training import Accumulator

    model.zero_grad(set_to_none=True)
    accumulator = Accumulator(model, optimizer, accum)
    accumulator.backward(accumulator.split(batch), forward)


def accumulation_times(model: nn.Module, batch: Sequence, accum: int, forward: Callable,
                       rounds: int) -> Dict[str, float]:
    """Seconds per item of one training step over ``batch`` (zero_grad, forward, backward; no
    update), in ``rounds`` rounds of three settings back to back: the batch at once
    (``direct``), in ``accum`` accumulated micro-batches (``accum``, as ``SOLVER.ACCUM_ITER``
    does), and the same micro-batches as separate steps with fresh gradients (``separate``).

    ``accum`` vs ``direct`` is what a user pays for accumulating; ``accum`` vs ``separate``
    isolates the accumulation itself from the cost of running smaller batches, which on a
    CPU is mostly the kernels' efficiency at a small batch. Medians of the rounds, and the
    two overheads as medians of per-round ratios; ``summing_share``: the CPU time summing
    the gradients takes (``gradient_summing``), as a share of the direct step.
    """
    from backbones.training import split_batch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # never stepped

    def step(setting: str) -> None:
        if setting == "separate":
            for chunk in split_batch(batch, accum):
                accumulated_step(model, optimizer, chunk, 1, forward)
        else:
            accumulated_step(model, optimizer, batch, 1 if setting == "direct" else accum, forward)

    times = time_rounds(step, ("direct", "accum", "separate"), rounds, per=len(batch))
    out = {f"s_{key}": statistics.median(values) for key, values in times.items()}
    out["accum_overhead"] = paired_ratios(times["accum"], times["direct"])["median"] - 1
    out["accum_vs_separate"] = paired_ratios(times["accum"], times["separate"])["median"] - 1
    summing = {n: gradient_summing(lambda: step(n)) for n in ("direct", "accum")}
    out["summing_share"] = ((summing["accum"]["seconds"] - summing["direct"]["seconds"])
                            / (out["s_direct"] * len(batch)))
    return out


def gradient_summing(step: Callable[[], object]) -> Dict[str, float]:
    """CPU time ``step`` spends in autograd's ``AccumulateGrad`` nodes (``seconds``, from the
    profiler) and how many ran (``calls``): the work gradient accumulation itself adds.

    Into a ``.grad`` that is None the node only stores the new gradient; into an existing
    one it adds it. So an accumulated step's ``seconds`` minus a direct step's is what
    summing the micro-batches' gradients costs, apart from the speed of the kernels at a
    smaller batch, and without the noise of comparing two wall times on a shared machine.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    nodes = [e for e in prof.key_averages() if e.key == "torch::autograd::AccumulateGrad"]
    return {"seconds": sum(e.cpu_time_total for e in nodes) / 1e6,
            "calls": sum(e.count for e in nodes)}


# ------------------------------------------------------------------ results
def paired_ratios(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Ratios ``a[i] / b[i]`` of measurements taken in the same round (a slow stretch of a
    shared machine hits both sides): median, range, and in how many rounds a was smaller."""
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "faster": sum(r < 1 for r in ratios), "sweeps": len(ratios)}


def fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` (and ``suffix``), "-" for a missing one."""
    return "-" if value is None else format(value, spec) + suffix


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (``tabulate``); cells are printed as given."""
    from tabulate import tabulate

    return tabulate([list(map(str, r)) for r in rows], headers=list(headers), tablefmt="github",
                    disable_numparse=True)
