"""Measuring memory: the bytes autograd keeps for backward, and the process's peak RSS.

Used by the tests and the benchmark scripts, so every number in the README is measured
the same way (README, "Memory and speed"): saved bytes count each storage once; the peak
is ``VmHWM`` above the RSS before the step, after a ``/proc/self/clear_refs`` reset.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint


class SavedTensorMeter:
    """Sum of the distinct storages saved for backward (``total_bytes``) while active."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages = {}

    def _pack(self, tensor):
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
            return tensor
        if storage.data_ptr() not in self.excluded:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

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
    with torch.autograd.graph.saved_tensors_hooks(meter._pack, lambda t: t):
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


def proc_status_mb(field: str) -> Optional[float]:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux). ``ru_maxrss`` cannot be reset and is
    inherited across ``exec``, so it is no use for one step's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
