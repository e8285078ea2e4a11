"""One optimizer step from several micro-batches, optionally in mixed precision.

Both training tools (``revdet``, ``revvideo``) take their step from here, so gradient
accumulation and autocast behave the same in detection and video:

* a batch is split into ``accum_iter`` micro-batches; each runs forward and backward on
  its own, so activation memory is that of one micro-batch, while gradients sum in
  ``.grad``;
* each micro-batch's loss is weighted by its share of the batch (``1 / accum_iter`` for
  equal parts), so the summed gradient is that of the whole batch's mean loss;
* under ``DistributedDataParallel`` all micro-batches but the last run inside
  ``no_sync()``: gradients are all-reduced once per optimizer step;
* mixed precision: the forward and the loss run under ``torch.autocast`` (bf16 on the CPU;
  fp16 or bf16 on CUDA), backward outside it; fp16 scales the loss with a ``GradScaler``.

Reversible backbones need nothing special: their engine re-enters the forward's autocast
state in backward, and their gradients accumulate into ``.grad`` like any others.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

import torch
from torch import nn

from .errors import UserError
from .lr_decay import check_layer_decay

Batch = TypeVar("Batch")
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def check_solver(solver, batch: int, batch_key: str, processes: int, device_type: str,
                 processes_name: str = "processes") -> None:
    """Raise a ``UserError`` naming the key if ``SOLVER.LAYER_DECAY``, ``SOLVER.ACCUM_ITER``
    or ``SOLVER.AMP`` cannot work; both tools' configs name these keys alike.

    ``batch`` (the config key ``batch_key``) is shared by ``processes`` processes (counted
    as ``processes_name``), and ``SOLVER.ACCUM_ITER`` must divide each one's share;
    ``device_type`` is where training runs ("cpu" or "cuda").
    """
    check_layer_decay(solver.LAYER_DECAY)
    processes = max(processes, 1)
    if processes > 1:
        batch_key = f"{batch_key} ({batch}) / {processes} {processes_name}"
    accum_iter, batch = solver.ACCUM_ITER, batch // processes
    if not isinstance(accum_iter, int) or accum_iter < 1:
        raise UserError(f"SOLVER.ACCUM_ITER must be a positive integer, got {accum_iter!r}")
    if batch % accum_iter:
        raise UserError(f"SOLVER.ACCUM_ITER {accum_iter} does not divide {batch_key} ({batch}): "
                        "every micro-batch must have the same size; choose a divisor")
    if not solver.AMP.ENABLED:
        return
    amp_dtype = solver.AMP.DTYPE
    if amp_dtype not in AMP_DTYPES:
        raise UserError(f"SOLVER.AMP.DTYPE must be one of {sorted(AMP_DTYPES)}, got {amp_dtype!r}")
    if amp_dtype == "float16" and device_type != "cuda":
        raise UserError(f"SOLVER.AMP.DTYPE float16 needs a CUDA device, but training runs on the "
                        f"{device_type.upper()}: use SOLVER.AMP.DTYPE bfloat16 there, or set "
                        "SOLVER.AMP.ENABLED False")


def split_batch(batch: Sequence[Batch], parts: int) -> List[Sequence[Batch]]:
    """``batch`` cut into ``parts`` consecutive micro-batches (fewer if it is shorter)."""
    n = len(batch)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [batch[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Accumulator:
    """Gradient accumulation and mixed precision for one model and its optimizer.

        acc = Accumulator(model, optimizer, accum_iter=4, amp_dtype=torch.bfloat16)
        optimizer.zero_grad()
        losses = acc.backward(acc.split(batch), lambda micro: model(micro))  # dict of losses
        acc.step()

    ``loss_fn(micro_batch)`` returns a dict of scalar losses (their sum is minimised).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, accum_iter: int = 1,
                 amp_dtype: Optional[torch.dtype] = None, device_type: str = "cpu"):
        self.model, self.optimizer, self.accum_iter = model, optimizer, accum_iter
        self.amp_dtype, self.device_type = amp_dtype, device_type
        self.scaler = (torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None)

    def split(self, batch: Sequence[Batch]) -> List[Sequence[Batch]]:
        return split_batch(batch, self.accum_iter)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def _no_sync(self, last: bool):
        no_sync = getattr(self.model, "no_sync", None)  # DistributedDataParallel
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def backward(self, micro_batches: Sequence[Sequence[Batch]],
                 loss_fn: Callable[[Sequence[Batch]], Dict[str, torch.Tensor]]
                 ) -> Dict[str, torch.Tensor]:
        """Forward and backward of every micro-batch; returns the batch's (detached) losses,
        each the size-weighted mean over the micro-batches."""
        total = sum(len(m) for m in micro_batches)
        summed: Dict[str, torch.Tensor] = {}
        for i, micro in enumerate(micro_batches):
            weight = len(micro) / total
            with self._no_sync(last=i == len(micro_batches) - 1):
                with self._autocast():
                    losses = loss_fn(micro)
                    loss = sum(losses.values()) * weight
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for k, v in losses.items():
                v = v.detach().float() * weight
                summed[k] = summed[k] + v if k in summed else v
        return summed

    def unscale_(self) -> None:
        """Bring fp16-scaled gradients back to their true size (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)

    def step(self) -> None:
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def state_dict(self) -> dict:
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])


class AccumulatorState:
    """Mixin for a trainer with ``state_dict`` / ``load_state_dict`` (Detectron2's) and an
    ``accumulator``: its checkpoints carry the fp16 ``GradScaler`` state too."""

    accumulator: Accumulator

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.accumulator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.accumulator.load_state_dict(state)
