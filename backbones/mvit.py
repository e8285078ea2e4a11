"""Rev-ViT, Rev-MViT and their non-reversible twins: one multiscale transformer.

A ViT is the single-stage case (no pooling). A reversible model keeps two residual streams
``[X1 | X2]`` (both start as copies of the patch tokens) through runs of ``ReversibleBlock``s;
wherever the resolution or width changes a non-reversible ``StageTransition`` fuses the
streams first. The twin uses standard pre-norm ``MultiScaleBlock``s of the same widths.
Classification ends in LayerNorm -> mean over tokens -> dropout -> linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import MultiScaleBlock, ReversibleBlock, StageTransition
from .layers import THW, PatchEmbed, layer_norm, resize_pos_embed
from .reversible import run_reversible


@dataclass
class ModelConfig:
    """Architecture as plain data. Layer lists use the official ``[[layer, value...], ...]`` form."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    input_size: Tuple[int, ...] = (224, 224)  # (H, W) for images, (T, H, W) for videos
    in_chans: int = 3
    patch_kernel: Tuple[int, ...] = (16, 16)
    patch_stride: Tuple[int, ...] = (16, 16)
    patch_padding: Tuple[int, ...] = (0, 0)
    num_classes: int = 1000
    qkv_bias: bool = True
    separate_qkv: bool = True  # q, k, v linears (ImageNet models) or one fused qkv (Kinetics)
    sep_pos_embed: bool = False  # separate spatial and temporal position embeddings
    dim_mul: List[List[float]] = field(default_factory=list)
    head_mul: List[List[float]] = field(default_factory=list)
    pool_q_stride: List[List[int]] = field(default_factory=list)  # [layer, st, sh, sw]
    pool_kv_stride_adaptive: Optional[List[int]] = None  # k/v stride at the first layer
    pool_kernel: Tuple[int, int, int] = (3, 3, 3)
    fusion: str = "concat_linear_2"  # how stage transitions merge the streams (blocks.FUSIONS)
    reversible: bool = True
    drop_path_rate: float = 0.0
    dropout: float = 0.0  # inside attention and MLP branches
    head_dropout: float = 0.0

    def validate(self) -> None:
        dims = len(self.input_size)
        if dims not in (2, 3):
            raise ValueError(f"input_size must be (H, W) or (T, H, W), got {self.input_size}")
        for name in ("patch_kernel", "patch_stride", "patch_padding"):
            if len(getattr(self, name)) != dims:
                raise ValueError(f"{name}={getattr(self, name)} does not match input_size={self.input_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        for name in ("dim_mul", "head_mul", "pool_q_stride"):
            for entry in getattr(self, name):
                if not 0 <= entry[0] < self.depth:
                    raise ValueError(f"{name} entry {entry} names layer {entry[0]}, "
                                     f"but depth={self.depth}")

    @property
    def is_video(self) -> bool:
        return len(self.input_size) == 3

    @property
    def patch_grid(self) -> THW:
        grid = [(s + 2 * p - k) // st + 1 for s, k, st, p in
                zip(self.input_size, self.patch_kernel, self.patch_stride, self.patch_padding)]
        return tuple(grid) if self.is_video else (1, *grid)


@dataclass
class LayerSpec:
    kind: str  # "reversible" | "transition" | "plain"
    dim: int
    dim_out: int
    num_heads: int
    q_stride: Optional[Tuple[int, int, int]]
    kv_stride: Optional[Tuple[int, int, int]]
    drop_path: float


def plan_layers(cfg: ModelConfig) -> List[LayerSpec]:
    """Per-layer widths, heads, strides and drop-path rates, derived from the config."""
    dim_mul = {int(i): m for i, m in cfg.dim_mul}
    head_mul = {int(i): m for i, m in cfg.head_mul}
    q_strides = {int(s[0]): tuple(s[1:]) for s in cfg.pool_q_stride}
    kv_stride = tuple(cfg.pool_kv_stride_adaptive) if cfg.pool_kv_stride_adaptive else None
    dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
    dim, heads, specs = cfg.embed_dim, cfg.num_heads, []
    for i in range(cfg.depth):
        q_stride = q_strides.get(i)
        if q_stride is not None and kv_stride is not None:
            kv_stride = tuple(max(k // q, 1) for k, q in zip(kv_stride, q_stride))
        heads = int(heads * head_mul.get(i, 1))
        dim_out = int(dim * dim_mul.get(i, 1))
        if dim_out % heads:
            raise ValueError(f"layer {i}: width {dim_out} is not divisible by {heads} heads")
        changes = q_stride is not None or i in dim_mul or i in head_mul
        if cfg.reversible and changes:
            if not specs or specs[-1].kind == "transition":
                raise ValueError(f"layer {i} changes resolution or width right after "
                                 f"{'the patch embedding' if not specs else f'layer {i - 1}'}; a "
                                 "reversible model needs a reversible block before each transition")
            dim_in = 2 * dim if cfg.fusion.startswith("concat") else dim
            specs.append(LayerSpec("transition", dim_in, dim_out, heads, q_stride, kv_stride, dpr[i]))
        else:
            kind = "reversible" if cfg.reversible else "plain"
            specs.append(LayerSpec(kind, dim, dim_out, heads, q_stride, kv_stride, dpr[i]))
        dim = dim_out
    return specs


class ClassifierHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(x))


class MViT(nn.Module):
    """Multiscale (reversible) vision transformer for images ``(B,3,H,W)`` or videos ``(B,3,T,H,W)``.

    ``forward(x)`` returns logits; ``forward_features`` the normalised tokens;
    ``forward_stages`` one feature map per stage (for detection); ``rev_backprop`` switches
    a reversible model between reversible backprop and plain autograd through the same blocks.

    ``recompute_transitions`` (with ``rev_backprop``) also recomputes the non-reversible
    stage transitions in backward (``torch.utils.checkpoint``) instead of storing their
    activations: one extra forward of a few layers for the rest of Rev-MViT's activation
    memory (the official model stores them). Gradients are unchanged.
    """

    def __init__(self, cfg: ModelConfig, rev_backprop: bool = True,
                 recompute_transitions: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.rev_backprop = rev_backprop
        self.recompute_transitions = recompute_transitions
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_kernel,
                                      cfg.patch_stride, cfg.patch_padding)
        t, h, w = cfg.patch_grid
        if cfg.sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, cfg.embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, cfg.embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, t * h * w, cfg.embed_dim))

        self.specs = plan_layers(cfg)
        kernel = tuple(cfg.pool_kernel)
        self.layers = nn.ModuleList()
        for s in self.specs:
            common = dict(mlp_ratio=cfg.mlp_ratio, drop_path=s.drop_path, dropout=cfg.dropout,
                          qkv_bias=cfg.qkv_bias, separate_qkv=cfg.separate_qkv, kernel=kernel,
                          q_stride=s.q_stride, kv_stride=s.kv_stride)
            if s.kind == "reversible":
                common.pop("q_stride")
                self.layers.append(ReversibleBlock(s.dim, s.num_heads, **common))
            elif s.kind == "transition":
                self.layers.append(StageTransition(s.dim, s.dim_out, s.num_heads,
                                                   fusion=cfg.fusion, **common))
            else:
                self.layers.append(MultiScaleBlock(s.dim, s.dim_out, s.num_heads, **common))

        self.num_features = self._width_after(len(self.specs) - 1)
        self.norm = layer_norm(self.num_features)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.head_dropout)
        self.stage_ends, self.stage_channels, self.stage_strides = self._stages()
        self.reset_parameters()

    # ----------------------------------------------------------------- structure
    def _width_after(self, i: int) -> int:
        """Channels of layer ``i``'s output: both streams after a reversible block."""
        spec = self.specs[i]
        return spec.dim_out * (2 if spec.kind == "reversible" else 1)

    def _stages(self) -> Tuple[List[int], List[int], List[int]]:
        """Index of the last layer of each stage (a stage ends before each q pooling), with
        the channels and spatial stride of its output map."""
        ends, channels, strides = [], [], []
        stride = self.cfg.patch_stride[-1]
        for i, s in enumerate(self.specs):
            if s.q_stride is not None and i > 0:
                ends.append(i - 1)
                channels.append(self._width_after(i - 1))
                strides.append(stride)
                stride *= s.q_stride[-1]
        ends.append(len(self.specs) - 1)
        channels.append(self.num_features)
        strides.append(stride)
        return ends, channels, strides

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.startswith("pos_embed"):
                nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.head.projection.weight, std=0.01)

    # ------------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        want = "(B, {}, T, H, W)" if cfg.is_video else "(B, {}, H, W)"
        want = want.format(cfg.in_chans)
        if x.dim() != 2 + len(cfg.input_size) or x.shape[1] != cfg.in_chans:
            raise ValueError(f"expected input of shape {want}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point input of shape {want}, got dtype {x.dtype}")
        if any(s + 2 * p < k for s, k, p in zip(x.shape[2:], cfg.patch_kernel, cfg.patch_padding)):
            raise ValueError(f"input {tuple(x.shape)} is smaller than the patch kernel {cfg.patch_kernel}")

    def _pos_embed(self, thw: THW) -> torch.Tensor:
        t, h, w = thw
        gt, gh, gw = self.cfg.patch_grid
        if self.cfg.sep_pos_embed:
            spatial = resize_pos_embed(self.pos_embed_spatial, (gh, gw), (h, w), "bicubic")
            temporal = resize_pos_embed(self.pos_embed_temporal, (gt,), (t,), "linear")
            return spatial.repeat(1, t, 1) + temporal.repeat_interleave(h * w, dim=1)
        if gt == 1 and t == 1:
            return resize_pos_embed(self.pos_embed, (gh, gw), (h, w), "bicubic")
        return resize_pos_embed(self.pos_embed, (gt, gh, gw), (t, h, w), "trilinear")

    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, THW]]]:
        """Run every layer; return the last tokens and each stage's (tokens, grid)."""
        self._check_input(x)
        x, thw = self.patch_embed(x)
        x = x + self._pos_embed(thw)
        use_rev = self.rev_backprop and self.training
        recompute = use_rev and self.recompute_transitions and torch.is_grad_enabled()
        stages, i = [], 0
        while i < len(self.layers):
            if isinstance(self.layers[i], ReversibleBlock):
                j = i
                while j < len(self.layers) and isinstance(self.layers[j], ReversibleBlock):
                    j += 1
                x = run_reversible(torch.cat([x, x], dim=-1), self.layers[i:j], thw, use_rev)
                i = j
            elif recompute and isinstance(self.layers[i], StageTransition):
                x, thw = checkpoint(self.layers[i], x, thw, use_reentrant=False)
                i += 1
            else:
                x, thw = self.layers[i](x, thw)
                i += 1
            if i - 1 in self.stage_ends:
                stages.append((x, thw))
        return x, stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final normalised tokens ``(B, N, num_features)``."""
        return self.norm(self._run(x)[0])

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """One map per stage, ``(B, C, H, W)`` for images or ``(B, C, T, H, W)`` for videos,
        with channels ``stage_channels`` at strides ``stage_strides`` (Rev-MViT-B: 4, 8, 16, 32;
        ViT: one map at 16). Reversible stages output both streams concatenated."""
        maps = []
        for tokens, (t, h, w) in self._run(x)[1]:
            b, _, c = tokens.shape
            grid = tokens.transpose(1, 2).reshape(b, c, t, h, w)
            maps.append(grid if self.cfg.is_video else grid.squeeze(2))
        return maps
