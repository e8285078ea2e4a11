"""Transformer blocks: the reversible block, the stage transition and the plain (twin) block.

All three are made of the same two branches, ``F`` (LayerNorm -> attention) and ``G``
(LayerNorm -> MLP), so a reversible model and its non-reversible twin differ only in how
the branches are wired.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .layers import THW, DropPath, Mlp, MultiScaleAttention, apply_mask, drop_path_mask, layer_norm


class AttentionBranch(nn.Module):
    """F: LayerNorm, then (pooled) multi-head attention."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, **attn_kwargs):
        super().__init__()
        self.norm = layer_norm(dim)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, **attn_kwargs)

    def forward(self, x: torch.Tensor, thw: THW) -> Tuple[torch.Tensor, THW]:
        return self.attn(self.norm(x), thw)


class MlpBranch(nn.Module):
    """G: LayerNorm, then a two-layer GELU MLP."""

    def __init__(self, dim: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.norm = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class ReversibleBlock(nn.Module):
    """``Y1 = X1 + F(X2)``, ``Y2 = X2 + G(Y1)``; its inputs can be recomputed from its outputs.

    Stochastic depth drops the whole block for a sample (one mask for both branches, as
    in the official model), which keeps the block invertible.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, drop_path: float,
                 dropout: float = 0.0, **attn_kwargs):
        super().__init__()
        self.drop_path = drop_path
        self.has_dropout = dropout > 0
        self.F = AttentionBranch(dim, dim, num_heads, dropout=dropout, **attn_kwargs)
        self.G = MlpBranch(dim, mlp_ratio, dropout)

    def sample_mask(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        return drop_path_mask(x, self.drop_path, self.training)

    def f(self, x2: torch.Tensor, thw: THW, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return apply_mask(self.F(x2, thw)[0], mask)

    def g(self, y1: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return apply_mask(self.G(y1), mask)

    def plain_forward(self, x1: torch.Tensor, x2: torch.Tensor, thw: THW):
        mask = self.sample_mask(x1)
        y1 = x1 + self.f(x2, thw, mask)
        y2 = x2 + self.g(y1, mask)
        return y1, y2

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, thw: THW, segment=None):
        """``(Y1, Y2)``. Inside a reversible segment (``segment``, from
        ``backbones.reversible``) the block runs as one step of reversible backprop, still
        through this module call so that hooks on the block fire as usual."""
        if segment is not None:
            return segment.run_block(self, x1, x2)
        return self.plain_forward(x1, x2, thw)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path:.4f}"


class MultiScaleBlock(nn.Module):
    """Standard pre-norm block ``x = res(x) + F(x); x = x + G(x)`` with optional q pooling.

    When the width changes, the residual is projected (``res_proj``) and then pooled with
    the attention's own q pooling so it matches the attention output's grid.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, *, mlp_ratio: float,
                 drop_path: float, dropout: float = 0.0, **attn_kwargs):
        super().__init__()
        self.F = AttentionBranch(dim, dim_out, num_heads, dropout=dropout, **attn_kwargs)
        self.G = MlpBranch(dim_out, mlp_ratio, dropout)
        if dim != dim_out:
            self.res_proj = nn.Linear(dim, dim_out)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, thw: THW) -> Tuple[torch.Tensor, THW]:
        res = self.res_proj(x) if hasattr(self, "res_proj") else x
        res = self.F.attn.pool_residual(res, thw)
        attn, out_thw = self.F(x, thw)
        x = res + self.drop_path(attn)
        x = x + self.drop_path(self.G(x))
        return x, out_thw


# How a stage transition merges the two streams (official MVIT.REV.PRE_Q_FUSION values).
FUSIONS = ("avg", "concat", "concat_linear_2")


class TwoStreamFusion(nn.Module):
    """Merges the two reversible streams ``[X1 | X2]`` before a stage transition.

    ``avg``: their mean (width C). ``concat``: the concatenation as it is (width 2C).
    ``concat_linear_2``: the concatenation refined by a residual MLP of hidden width 2x
    (width 2C).
    """

    def __init__(self, mode: str, dim: int):
        super().__init__()
        self.mode = mode
        if mode == "concat_linear_2":
            self.fuse_fn = Mlp(dim, 2 * dim)
        elif mode not in FUSIONS:
            raise ValueError(f"unknown stream fusion {mode!r}; expected one of {FUSIONS}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return torch.stack(x.chunk(2, dim=-1)).mean(dim=0)
        if self.mode == "concat":
            return x
        return x + self.fuse_fn(x)


class StageTransition(MultiScaleBlock):
    """Non-reversible block between reversible stages: fuse the streams, then pool and widen."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, *, fusion: str, **kwargs):
        super().__init__(dim, dim_out, num_heads, **kwargs)
        self.pre_q_fuse = TwoStreamFusion(fusion, dim)

    def forward(self, x: torch.Tensor, thw: THW) -> Tuple[torch.Tensor, THW]:
        return super().forward(self.pre_q_fuse(x), thw)
