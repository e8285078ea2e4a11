"""Reversible backpropagation for a run of ``ReversibleBlock``s.

Forward keeps only the segment's output ``[Y1 | Y2]``. Backward walks the blocks in
reverse, recomputing each block's inputs from its outputs,

    X2 = Y2 - G(Y1),    X1 = Y1 - F(X2),

while back-propagating through the recomputed branches.

Each block is one autograd Function, applied from inside the block's own module call and
chained to the next block through its outputs, so autograd itself orders the backward
passes and hands every block's parameter gradients to ``AccumulateGrad`` (``.grad``, its
hooks, DDP's reducer, FSDP's reduce-scatter) as soon as that block is done. At most one
block's gradients are ever held as temporaries, and communication overlaps the backward
of the blocks below. The blocks store nothing but their drop-path masks and RNG states;
the reconstructed activations are
handed from block to block through a small ``_SegmentState``, seeded from the segment
output that ``_SegmentEnd`` saves.

Three things make the recomputation exact:

* randomness replays: each block's drop-path mask is kept (B numbers) and the RNG state
  before each dropout-carrying branch is restored in backward, inside ``fork_rng`` so the
  global RNG ends where a plain forward leaves it (on any device type);
* mixed precision replays: backward re-enters the autocast state recorded in forward, and
  the residual streams are kept in fp32;
* the trainable parameters are captured at forward time; a block whose parameters'
  ``requires_grad`` changed before its backward refuses to run rather than misroute.

Hooks registered on a block fire once per forward, as without reversible backprop. Hooks
on its branches ``F`` and ``G`` (or anything inside them) fire again during backward,
when the branches are recomputed.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from .blocks import ReversibleBlock
from .layers import THW


class RngState:
    """The state of the generator a tensor's random ops draw from, on any device type."""

    def __init__(self, device: torch.device):
        self.device = device
        self.state = (torch.get_rng_state() if device.type == "cpu"
                      else torch.get_device_module(device.type).get_rng_state(device))

    def restore(self) -> None:
        if self.device.type == "cpu":
            torch.set_rng_state(self.state)
        else:
            torch.get_device_module(self.device.type).set_rng_state(self.state, self.device)


def _fork_rng(device: torch.device):
    """Restore the global RNG of ``device`` (and the CPU's) on exit."""
    devices = [] if device.type == "cpu" else [device]
    return torch.random.fork_rng(devices=devices, device_type=device.type)


def _autocast_state(device_type: str) -> dict:
    return {"device_type": device_type,
            "enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type)}


def _trainable(module: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class _SegmentState:
    """What the blocks of one segment share: the grid, the forward's autocast state, and in
    backward the reconstructed activations ``(Y1, Y2)`` of the block whose turn is next."""

    def __init__(self, thw: THW, device: torch.device):
        self.thw = thw
        self.device = device
        self.autocast = _autocast_state(device.type)
        self.outputs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def run_block(self, block: ReversibleBlock, x1: torch.Tensor, x2: torch.Tensor):
        """Apply ``block`` under reversible backprop (called from ``block.forward``)."""
        f_params, g_params = _trainable(block.F), _trainable(block.G)
        if not (x1.requires_grad or x2.requires_grad or f_params or g_params):
            return block.plain_forward(x1, x2, self.thw)  # nothing of it is differentiated
        return _ReversibleBlockFunction.apply(x1, x2, block, self, len(f_params),
                                              *f_params, *g_params)


class _ReversibleBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, block: ReversibleBlock, state: _SegmentState, num_f: int, *params):
        mask = block.sample_mask(x1)
        rng_f = RngState(x1.device) if block.has_dropout else None
        y1 = x1 + block.f(x2, state.thw, mask)
        rng_g = RngState(x1.device) if block.has_dropout else None
        y2 = x2 + block.g(y1, mask)
        ctx.save_for_backward(mask)
        ctx.block, ctx.state = block, state
        ctx.rng, ctx.num_f, ctx.params = (rng_f, rng_g), num_f, params
        return y1, y2

    @staticmethod
    @once_differentiable
    def backward(ctx, dy1: torch.Tensor, dy2: torch.Tensor):
        mask, = ctx.saved_tensors  # autograd's usual error if the graph was freed
        block, state, (rng_f, rng_g), params = ctx.block, ctx.state, ctx.rng, ctx.params
        if not all(p.requires_grad for p in params):
            raise RuntimeError(
                "reversible backprop: parameters of a ReversibleBlock stopped requiring "
                "gradients between forward and backward; change requires_grad before the forward")
        f_params, g_params = list(params[:ctx.num_f]), list(params[ctx.num_f:])
        y1, y2 = state.outputs
        with _fork_rng(state.device), torch.autocast(**state.autocast):
            with torch.enable_grad():
                y1 = y1.detach().requires_grad_()
                if rng_g is not None:
                    rng_g.restore()
                g = block.g(y1, mask)
            dy1_extra, *g_grads = torch.autograd.grad(g, [y1] + g_params, dy2, allow_unused=True)
            with torch.no_grad():
                x2 = y2 - g
                dy1 = dy1 + dy1_extra
            del g
            with torch.enable_grad():
                x2.requires_grad_()
                if rng_f is not None:
                    rng_f.restore()
                f = block.f(x2, state.thw, mask)
            dx2_extra, *f_grads = torch.autograd.grad(f, [x2] + f_params, dy1, allow_unused=True)
            with torch.no_grad():
                x1 = y1.detach() - f
                dy2 = dy2 + dx2_extra
            del f
        state.outputs = (x1, x2.detach())
        return (dy1, dy2, None, None, None, *f_grads, *g_grads)


class _SegmentEnd(torch.autograd.Function):
    """Saves the segment output ``[Y1 | Y2]``, the one activation a segment keeps; its
    backward, which autograd runs before any block's, (re)starts the walk down the blocks,
    so a second backward over a retained graph starts from the output again."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, state: _SegmentState):
        ctx.save_for_backward(out)
        ctx.state = state
        return out.view_as(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        out, = ctx.saved_tensors
        ctx.state.outputs = tuple(t.detach() for t in out.chunk(2, dim=-1))
        return grad_out, None


class _ReversibleSegment:
    """A maximal run of reversible blocks, applied block by block under reversible backprop."""

    @staticmethod
    def apply(x: torch.Tensor, blocks: Sequence[ReversibleBlock], thw: THW) -> torch.Tensor:
        state = _SegmentState(thw, x.device)
        x1, x2 = x.chunk(2, dim=-1)
        for blk in blocks:
            x1, x2 = blk(x1, x2, thw, segment=state)
        out = torch.cat([x1, x2], dim=-1)
        return _SegmentEnd.apply(out, state) if out.requires_grad else out


def _apply_segment(x, blocks, thw):
    if torch.compiler.is_compiling():
        # Segments run eagerly under ``torch.compile`` (a graph break): dynamo cannot trace
        # the RNG forking of the backward, and per-segment recompiles with dynamic shapes
        # crash inductor (torch 2.14); everything around them still compiles. Wrapped here,
        # not with a decorator, because ``torch.compiler.disable`` imports torch._dynamo
        # (1.5 s), which eager users never need.
        return torch.compiler.disable(_ReversibleSegment.apply)(x, blocks, thw)
    return _ReversibleSegment.apply(x, blocks, thw)


def run_reversible(x: torch.Tensor, blocks: Sequence[ReversibleBlock], thw: THW,
                   rev_backprop: bool = True) -> torch.Tensor:
    """Apply ``blocks`` to the two-stream tensor ``x = [X1 | X2]`` of shape ``(B, N, 2C)``.

    With ``rev_backprop`` (and a graph to build) only the output is stored for backward;
    otherwise the blocks run as a plain loop under ordinary autograd.
    """
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # residual streams stay fp32: reconstruction in low precision drifts
    if rev_backprop and torch.is_grad_enabled() and len(blocks) > 0:
        return _apply_segment(x, blocks, thw)
    x1, x2 = x.chunk(2, dim=-1)
    for blk in blocks:
        x1, x2 = blk(x1, x2, thw)
    return torch.cat([x1, x2], dim=-1)
