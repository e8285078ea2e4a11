"""Building blocks shared by every model: patch embedding, pooled attention, MLP, drop path.

Token tensors are ``(B, N, C)`` with tokens in T-major, then H, then W order; ``thw`` is the
token grid ``(T, H, W)`` (``T == 1`` for images). Module and parameter names follow the
official Rev-ViT / Rev-MViT code, so released weights load by name.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

THW = Tuple[int, int, int]


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


def drop_path_mask(x: torch.Tensor, drop_prob: float, training: bool) -> Optional[torch.Tensor]:
    """Per-sample keep mask of shape ``(B, 1, 1)``, already scaled by 1/keep; None if inactive."""
    if drop_prob == 0.0 or not training:
        return None
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return mask.div_(keep)


def apply_mask(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    return x if mask is None else x * mask


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (independent mask per call)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_mask(x, drop_path_mask(x, self.drop_prob, self.training))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"


class PatchEmbed(nn.Module):
    """Conv2d (images) or Conv3d (videos) patchifier returning tokens and their grid."""

    def __init__(self, in_chans: int, dim: int, kernel: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int]):
        super().__init__()
        conv = nn.Conv2d if len(kernel) == 2 else nn.Conv3d
        self.proj = conv(in_chans, dim, tuple(kernel), tuple(stride), tuple(padding))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, THW]:
        x = self.proj(x)
        thw = (1,) + tuple(x.shape[2:]) if x.dim() == 4 else tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), thw


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dim_out: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out or dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)``, except that a bf16 ``x`` on the CPU is pooled in fp32 and cast back.

    The tokens reach the pooling conv in channels-last memory, and for that layout oneDNN's
    bf16 kernel of the conv's weight gradient (``jit_bf16:avx512_core_bf16`` backward
    weights, CPUs with AVX512-BF16, torch 2.14) reads memory it never wrote: with small
    heads or grids some gradients of the pooling weights came out NaN, or different from
    run to run, depending on what the allocator handed out. Its fp32 kernel is sound, and
    the depthwise pooling is a small part of a step.
    """
    if x.device.type != "cpu" or x.dtype != torch.bfloat16 or not isinstance(pool, nn.Conv3d):
        return pool(x)
    bias = None if pool.bias is None else pool.bias.float()
    with torch.autocast("cpu", enabled=False):
        out = F.conv3d(x.float(), pool.weight.float(), bias, pool.stride, pool.padding,
                       pool.dilation, pool.groups)
    return out.to(x.dtype)


def pool_tokens(x: torch.Tensor, pool: Optional[nn.Module], norm: Optional[nn.Module],
                thw: THW) -> Tuple[torch.Tensor, THW]:
    """Pool per-head tokens ``(B, heads, N, hd)`` over their grid with a depthwise conv."""
    if pool is None:
        return x, thw
    b, heads, n, hd = x.shape
    x = x.reshape(b * heads, *thw, hd).permute(0, 4, 1, 2, 3)
    x = _pool(pool, x)
    thw = tuple(x.shape[2:])
    x = x.reshape(b, heads, hd, -1).transpose(2, 3)
    if norm is not None:
        x = norm(x)
    return x, thw


class MultiScaleAttention(nn.Module):
    """Multi-head attention with optional conv pooling of q (resolution change) and k/v (cost).

    Without pooling this is plain ViT attention. The attention itself goes through
    ``scaled_dot_product_attention`` so the (N x N) attention matrix is never stored.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, *, qkv_bias: bool = True,
                 separate_qkv: bool = True, kernel: Sequence[int] = (1, 1, 1),
                 q_stride: Optional[Sequence[int]] = None, kv_stride: Optional[Sequence[int]] = None,
                 dropout: float = 0.0):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dim_out = dim_out
        head_dim = dim_out // num_heads
        if separate_qkv:
            self.q = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.k = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.v = nn.Linear(dim, dim_out, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for name, stride in (("q", q_stride), ("k", kv_stride), ("v", kv_stride)):
            if stride is None:
                continue
            conv = nn.Conv3d(head_dim, head_dim, tuple(kernel), tuple(stride),
                             tuple(k // 2 for k in kernel), groups=head_dim, bias=False)
            setattr(self, f"pool_{name}", conv)
            setattr(self, f"norm_{name}", layer_norm(head_dim))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, thw: THW) -> Tuple[torch.Tensor, THW]:
        b, n, _ = x.shape
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (self.split_heads(lin(x)) for lin in (self.q, self.k, self.v))
        q, q_thw = pool_tokens(q, getattr(self, "pool_q", None), getattr(self, "norm_q", None), thw)
        k, _ = pool_tokens(k, getattr(self, "pool_k", None), getattr(self, "norm_k", None), thw)
        v, _ = pool_tokens(v, getattr(self, "pool_v", None), getattr(self, "norm_v", None), thw)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(b, -1, self.dim_out)
        return self.proj_drop(self.proj(x)), q_thw

    def pool_residual(self, x: torch.Tensor, thw: THW) -> torch.Tensor:
        """Pool a ``(B, N, dim_out)`` residual with this attention's own q pooling (shared weights)."""
        if not hasattr(self, "pool_q"):
            return x
        x, _ = pool_tokens(self.split_heads(x), self.pool_q, self.norm_q, thw)
        return x.transpose(1, 2).flatten(2)


def resize_pos_embed(pos: torch.Tensor, src: Sequence[int], dst: Sequence[int],
                     mode: str = "bicubic") -> torch.Tensor:
    """Resize a ``(1, prod(src), C)`` embedding laid out on grid ``src`` to grid ``dst``."""
    if tuple(src) == tuple(dst) and not torch.jit.is_tracing():  # traced: the size may vary
        return pos
    c = pos.shape[-1]
    grid = pos.reshape(1, *src, c).movedim(-1, 1)
    work_dtype = pos.dtype if pos.dtype in (torch.float32, torch.float64) else torch.float32
    grid = F.interpolate(grid.to(work_dtype), size=tuple(dst), mode=mode,
                         align_corners=False).to(pos.dtype)
    return grid.movedim(1, -1).reshape(1, math.prod(dst), c)
