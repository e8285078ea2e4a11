"""Reversible backpropagation for a run of ``ReversibleBlock``s.

Forward keeps only the segment's output ``[Y1 | Y2]``. Backward walks the blocks in
reverse, recomputing each block's inputs from its outputs,

    X2 = Y2 - G(Y1),    X1 = Y1 - F(X2),

while back-propagating through the recomputed branches. Three things make this exact:

* randomness replays: each block's drop-path mask is kept (B numbers) and the RNG state
  before each dropout-carrying branch is restored in backward, inside ``fork_rng`` so the
  global RNG ends where a plain forward leaves it;
* mixed precision replays: backward re-enters the autocast state recorded in forward, and
  the residual streams are kept in fp32;
* parameter gradients are returned from the Function like any other input gradient, so
  ``loss.backward()``, ``torch.autograd.grad``, DDP hooks and frozen parameters all behave
  as with plain autograd.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from .blocks import ReversibleBlock
from .layers import THW


class RngState:
    """The state of the generator a tensor's random ops draw from (CPU or its CUDA device)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.state = (torch.cuda.get_rng_state(device) if device.type == "cuda"
                      else torch.get_rng_state())

    def restore(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.state, self.device)
        else:
            torch.set_rng_state(self.state)


def _autocast_state(device_type: str) -> dict:
    return {"device_type": device_type,
            "enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type)}


def _trainable(module: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class _ReversibleSegment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, blocks: Sequence[ReversibleBlock], thw: THW, *params):
        x1, x2 = x.chunk(2, dim=-1)
        masks, rng = [], []
        for blk in blocks:
            mask = blk.sample_mask(x1)
            rng_f = RngState(x.device) if blk.has_dropout else None
            x1 = x1 + blk.f(x2, thw, mask)
            rng_g = RngState(x.device) if blk.has_dropout else None
            x2 = x2 + blk.g(x1, mask)
            masks.append(mask)
            rng.append((rng_f, rng_g))
        out = torch.cat([x1, x2], dim=-1)
        ctx.save_for_backward(out, *masks)
        ctx.blocks, ctx.thw, ctx.rng = blocks, thw, rng
        ctx.autocast = _autocast_state(x.device.type)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        out, *masks = ctx.saved_tensors
        y1, y2 = (t.detach() for t in out.chunk(2, dim=-1))
        dy1, dy2 = grad_out.chunk(2, dim=-1)
        param_grads: List[Optional[torch.Tensor]] = []
        devices = [out.device] if out.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.autocast(**ctx.autocast):
            for blk, mask, (rng_f, rng_g) in reversed(list(zip(ctx.blocks, masks, ctx.rng))):
                g_params, f_params = _trainable(blk.G), _trainable(blk.F)
                with torch.enable_grad():
                    y1 = y1.requires_grad_()
                    if rng_g is not None:
                        rng_g.restore()
                    g = blk.g(y1, mask)
                dy1_extra, *g_grads = torch.autograd.grad(g, [y1] + g_params, dy2, allow_unused=True)
                with torch.no_grad():
                    x2 = y2 - g
                    dy1 = dy1 + dy1_extra
                del g
                with torch.enable_grad():
                    x2.requires_grad_()
                    if rng_f is not None:
                        rng_f.restore()
                    f = blk.f(x2, ctx.thw, mask)
                dx2_extra, *f_grads = torch.autograd.grad(f, [x2] + f_params, dy1, allow_unused=True)
                with torch.no_grad():
                    x1 = y1.detach() - f
                    dy2 = dy2 + dx2_extra
                del f
                param_grads = f_grads + g_grads + param_grads
                y1, y2 = x1, x2.detach()
        grad_x = torch.cat([dy1, dy2], dim=-1) if ctx.needs_input_grad[0] else None
        return (grad_x, None, None, *param_grads)


def _apply_segment(x, blocks, thw, params):
    if torch.compiler.is_compiling():
        # Segments run eagerly under ``torch.compile`` (a graph break): dynamo cannot trace
        # the RNG forking of the backward, and per-segment recompiles with dynamic shapes
        # crash inductor (torch 2.14); everything around them still compiles. Wrapped here,
        # not with a decorator, because ``torch.compiler.disable`` imports torch._dynamo
        # (1.5 s), which eager users never need.
        return torch.compiler.disable(_ReversibleSegment.apply)(x, blocks, thw, *params)
    return _ReversibleSegment.apply(x, blocks, thw, *params)


def _segment_params(blocks: Sequence[ReversibleBlock]) -> List[torch.nn.Parameter]:
    """Trainable parameters in the order backward produces their gradients (F then G per block)."""
    return [p for blk in blocks for p in _trainable(blk.F) + _trainable(blk.G)]


def run_reversible(x: torch.Tensor, blocks: Sequence[ReversibleBlock], thw: THW,
                   rev_backprop: bool = True) -> torch.Tensor:
    """Apply ``blocks`` to the two-stream tensor ``x = [X1 | X2]`` of shape ``(B, N, 2C)``.

    With ``rev_backprop`` (and a graph to build) only the output is stored for backward;
    otherwise the blocks run as a plain loop under ordinary autograd.
    """
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # residual streams stay fp32: reconstruction in low precision drifts
    params = _segment_params(blocks)
    if rev_backprop and torch.is_grad_enabled() and (x.requires_grad or params):
        return _apply_segment(x, blocks, thw, params)
    x1, x2 = x.chunk(2, dim=-1)
    for blk in blocks:
        x1, x2 = blk(x1, x2, thw)
    return torch.cat([x1, x2], dim=-1)
