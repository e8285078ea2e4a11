"""Position embeddings of a checkpoint fitted to a model: class-token rows dropped, grids resized.

The resampling is written here rather than taken from a library on purpose: ``backbones``
imports torch only (timm's ``resample_abs_pos_embed`` is not available), and a resized
checkpoint must compute what the model computes when it resizes its own embedding at run
time for another input size (``MViT`` uses the same ``backbones.layers.resize_pos_embed``:
bicubic over space, linear over time, ``align_corners=False``, as the official MViT
interpolates). tests/test_checkpoint.py compares the two.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from ..layers import resize_pos_embed
from ..mvit import ModelConfig, MViT
from ..official import IGNORED_KEYS


def _square(n: int) -> Optional[int]:
    side = math.isqrt(n)
    return side if side * side == n else None


def drop_class_token(state: Dict[str, torch.Tensor],
                     config: Optional[ModelConfig]) -> Dict[str, torch.Tensor]:
    """Drop class-token keys, and the class-token row of a ``pos_embed`` that has one."""
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    pos = state.get("pos_embed")
    if pos is None or pos.dim() != 3:
        return state
    n = pos.shape[1]
    if config is not None:
        has_cls = n == math.prod(config.patch_grid) + 1
    else:  # images: a square grid plus one
        has_cls = _square(n) is None and _square(n - 1) is not None
    if has_cls:
        state["pos_embed"] = pos[:, 1:]
    return state


def _source_grid(key: str, tensor: torch.Tensor, config: Optional[ModelConfig],
                 target: Tuple[int, int, int]) -> Optional[Tuple[int, ...]]:
    """The token grid a checkpoint's position embedding was laid out on."""
    n = tensor.shape[1]
    if key == "pos_embed_temporal":
        return (n,)
    if config is not None:
        t, h, w = config.patch_grid
        grid = (h, w) if key == "pos_embed_spatial" else (t, h, w)
        if math.prod(grid) == n:
            return grid
    t = 1 if key == "pos_embed_spatial" else target[0]
    if n % t == 0 and _square(n // t):
        side = _square(n // t)
        return (side, side) if key == "pos_embed_spatial" else (t, side, side)
    return None


def _resize_grid(pos: torch.Tensor, src: Tuple[int, int, int],
                 dst: Tuple[int, int, int]) -> torch.Tensor:
    """Resize a joint (T, H, W) embedding: bicubic over space per frame, then linear over time."""
    (t, h, w), (t2, h2, w2) = src, dst
    c = pos.shape[-1]
    frames = pos.reshape(t, h * w, c)
    frames = torch.cat([resize_pos_embed(f[None], (h, w), (h2, w2), "bicubic") for f in frames])
    if t != t2:
        flat = frames.reshape(1, t, h2 * w2 * c)
        frames = resize_pos_embed(flat, (t,), (t2,), "linear").reshape(t2, h2 * w2, c)
    return frames.reshape(1, t2 * h2 * w2, c)


def resize_pos_embeds(state: Dict[str, torch.Tensor], model: MViT,
                      config: Optional[ModelConfig]) -> List[Tuple[str, tuple, tuple]]:
    """Resize position embeddings in place to ``model``'s token grid; return what changed.

    ``config`` is the checkpoint's architecture if known (its grid); otherwise square
    image grids are assumed. Embeddings whose grid cannot be told are left for the key
    report to name as mis-shaped."""
    target = model.cfg.patch_grid
    own = model.state_dict()
    resized = []
    for key in ("pos_embed", "pos_embed_spatial", "pos_embed_temporal"):
        if key not in state or key not in own:
            continue
        pos, want = state[key], own[key]
        if pos.shape == want.shape or pos.dim() != 3 or pos.shape[-1] != want.shape[-1]:
            continue
        src = _source_grid(key, pos, config, target)
        if src is None:
            continue  # reported as mis-shaped
        if key == "pos_embed_temporal":
            new = resize_pos_embed(pos, src, target[:1], "linear")
        elif key == "pos_embed_spatial":
            new = resize_pos_embed(pos, src, target[1:], "bicubic")
        else:
            src3 = src if len(src) == 3 else (1, *src)
            new = _resize_grid(pos, src3, target)
        if new.shape == want.shape:
            state[key] = new
            resized.append((key, tuple(pos.shape), tuple(new.shape)))
    return resized
