"""Exact activation memory: the bytes autograd keeps for backward during a forward."""

from __future__ import annotations

import contextlib
from typing import Iterator


class SavedTensorMeter:
    """Sum of the distinct storages saved for backward (``total_bytes``) while active."""

    def __init__(self):
        self.storages = {}

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total_bytes(self) -> int:
        return sum(self.storages.values())


@contextlib.contextmanager
def saved_tensor_meter() -> Iterator[SavedTensorMeter]:
    """``with saved_tensor_meter() as m: loss = model(x)...``; then read ``m.total_bytes``.

    Covers everything autograd stores, including what reversible segments save; each
    storage is counted once however many tensors view it.
    """
    meter = SavedTensorMeter()
    import torch

    with torch.autograd.graph.saved_tensors_hooks(meter._pack, lambda t: t):
        yield meter
