"""The mmpretrain Rev-ViT format (``RevVisionTransformer`` + ``LinearClsHead``): key names both ways.

mmpretrain's revvit-small/-base files are bare state dicts converted from the official
weights: the same tensors under other names, with each attention's ``q``, ``k``, ``v``
linears fused into one ``qkv`` (rows ``[q; k; v]``). They carry no config, so the
architecture is read off the tensors; only the number of heads is not in them.
mmpretrain implements Rev-ViT only (no Rev-MViT).
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional

import torch

from .mvit import ModelConfig
from .zoo import MODEL_CONFIGS

# mmpretrain name -> revvision name, for everything but the fused qkv.
_RENAMES = [
    (re.compile(r"^backbone\.pos_embed$"), "pos_embed"),
    (re.compile(r"^backbone\.patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^backbone\.layers\.(\d+)\.ln1\."), r"layers.\1.F.norm."),
    (re.compile(r"^backbone\.layers\.(\d+)\.attn\.proj\."), r"layers.\1.F.attn.proj."),
    (re.compile(r"^backbone\.layers\.(\d+)\.ln2\."), r"layers.\1.G.norm."),
    (re.compile(r"^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\."), r"layers.\1.G.mlp.fc1."),
    (re.compile(r"^backbone\.layers\.(\d+)\.ffn\.layers\.1\."), r"layers.\1.G.mlp.fc2."),
    (re.compile(r"^backbone\.ln1\."), "norm."),
    (re.compile(r"^head\.fc\."), "head.projection."),
]
_QKV = re.compile(r"^backbone\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_Q = re.compile(r"^layers\.(\d+)\.F\.attn\.q\.(weight|bias)$")
_KV = re.compile(r"^layers\.(\d+)\.F\.attn\.[kv]\.(weight|bias)$")


def is_mmpretrain(state: Mapping[str, object]) -> bool:
    """Whether a bare state dict uses mmpretrain's names (``backbone.*`` / ``head.fc.*``)."""
    return any(k.startswith("backbone.") or k.startswith("head.fc.") for k in state)


def from_mmpretrain_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mmpretrain names -> revvision names; each fused ``qkv`` is split into ``q``, ``k``, ``v``.

    Keys that match no rule are kept as they are (so a load reports them as unexpected).
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        qkv = _QKV.match(key)
        if qkv:  # q, k, v in the official order: q.weight, q.bias, k.weight, ...
            layer, kind = qkv.groups()
            if kind == "bias" and f"backbone.layers.{layer}.attn.qkv.weight" in state:
                continue  # already placed with the weight
            fused = {k: state.get(f"backbone.layers.{layer}.attn.qkv.{k}") for k in ("weight", "bias")}
            for n in range(3):
                for k, tensor in fused.items():
                    if tensor is None:
                        continue
                    if tensor.shape[0] % 3:
                        raise ValueError(f"backbone.layers.{layer}.attn.qkv.{k} has "
                                         f"{tensor.shape[0]} rows, not a multiple of 3 (q, k, v)")
                    out[f"layers.{layer}.F.attn.{'qkv'[n]}.{k}"] = tensor.chunk(3, dim=0)[n].clone()
            continue
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key)
                break
        out[key] = value
    return out


def to_mmpretrain_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """revvision names (of a Rev-ViT) -> mmpretrain names, fusing ``q``, ``k``, ``v`` into ``qkv``."""
    inverse = [
        (re.compile(r"^pos_embed$"), "backbone.pos_embed"),
        (re.compile(r"^patch_embed\.proj\."), "backbone.patch_embed.projection."),
        (re.compile(r"^layers\.(\d+)\.F\.norm\."), r"backbone.layers.\1.ln1."),
        (re.compile(r"^layers\.(\d+)\.F\.attn\.proj\."), r"backbone.layers.\1.attn.proj."),
        (re.compile(r"^layers\.(\d+)\.G\.norm\."), r"backbone.layers.\1.ln2."),
        (re.compile(r"^layers\.(\d+)\.G\.mlp\.fc1\."), r"backbone.layers.\1.ffn.layers.0.0."),
        (re.compile(r"^layers\.(\d+)\.G\.mlp\.fc2\."), r"backbone.layers.\1.ffn.layers.1."),
        (re.compile(r"^norm\."), "backbone.ln1."),
        (re.compile(r"^head\.projection\."), "head.fc."),
    ]
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        q = _Q.match(key)
        if q:  # the fused tensor takes the place of q; k and v are folded into it
            layer, kind = q.groups()
            parts = [state.get(f"layers.{layer}.F.attn.{n}.{kind}") for n in "qkv"]
            if any(p is None for p in parts):
                raise ValueError(f"layer {layer} has q.{kind} but not both k.{kind} and v.{kind}")
            out[f"backbone.layers.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        if _KV.match(key):
            continue
        for pattern, replacement in inverse:
            if pattern.match(key):
                key = pattern.sub(replacement, key)
                break
        else:
            raise ValueError(f"{key!r} has no mmpretrain counterpart (mmpretrain implements "
                             "Rev-ViT only)")
        out[key] = value
    return out


def _zoo_heads(embed_dim: int) -> Optional[int]:
    """Heads of the zoo's reversible ViT of this width (rev_vit_s: 384 -> 6, rev_vit_b: 768 -> 12)."""
    for name, cfg in sorted(MODEL_CONFIGS.items()):
        if name.startswith("rev_vit_") and cfg["embed_dim"] == embed_dim:
            return cfg["num_heads"]
    return None


def config_from_mmpretrain(state: Mapping[str, torch.Tensor], name: Optional[str] = None,
                           **overrides) -> ModelConfig:
    """Rev-ViT ``ModelConfig`` read off a state dict in revvision names (converted from mmpretrain).

    Width, depth, patch size, input size (square), MLP ratio, qkv bias and classes come
    from the tensors. Heads come from ``overrides["num_heads"]``, else from the zoo model
    ``name``, else from the zoo Rev-ViT of the same width; other settings from ``name``
    or mmpretrain's defaults (no dropout, no drop path). Raises ``ValueError`` when the
    heads cannot be determined or ``name`` contradicts the tensors.
    """
    required = ["pos_embed", "patch_embed.proj.weight", "layers.0.G.mlp.fc1.weight",
                "head.projection.weight"]
    absent = [k for k in required if k not in state]
    if absent:
        raise ValueError(f"cannot infer a Rev-ViT from this state dict: no {absent}")
    patch = tuple(state["patch_embed.proj.weight"].shape[2:])
    embed_dim = state["pos_embed"].shape[-1]
    tokens = state["pos_embed"].shape[1]
    side = round(tokens ** 0.5)
    if side * side != tokens or len(patch) != 2:
        raise ValueError(f"pos_embed has {tokens} tokens: not a square 2D grid")
    layers = {int(m.group(1)) for k in state for m in [re.match(r"^layers\.(\d+)\.", k)] if m}
    inferred = dict(
        embed_dim=embed_dim, depth=len(layers), input_size=(side * patch[0], side * patch[1]),
        patch_kernel=patch, patch_stride=patch, patch_padding=(0, 0),
        in_chans=state["patch_embed.proj.weight"].shape[1],
        mlp_ratio=state["layers.0.G.mlp.fc1.weight"].shape[0] / embed_dim,
        num_classes=state["head.projection.weight"].shape[0],
        qkv_bias="layers.0.F.attn.q.bias" in state, separate_qkv=True, reversible=True,
    )
    if name is not None:
        if name not in MODEL_CONFIGS:
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_CONFIGS))}")
        base = dict(MODEL_CONFIGS[name])
        for key in ("embed_dim", "depth", "patch_kernel", "patch_stride", "reversible"):
            want = base.get(key)
            if key in base and _as_tuple(want) != _as_tuple(inferred[key]):
                raise ValueError(f"the checkpoint has {key}={inferred[key]}, but {name!r} has "
                                 f"{key}={want}")
        if base.get("pool_q_stride"):
            raise ValueError(f"{name!r} is a Rev-MViT; mmpretrain checkpoints are Rev-ViTs")
    else:
        base = dict(drop_path_rate=0.0, dropout=0.0, head_dropout=0.0)
        heads = _zoo_heads(embed_dim)
        if heads is not None:
            base["num_heads"] = heads
    merged = {**base, **inferred, **overrides}
    if "num_heads" not in merged:
        raise ValueError(f"the number of attention heads is not stored in mmpretrain files and no "
                         f"zoo Rev-ViT has width {embed_dim}: pass name=... or num_heads=...")
    cfg = ModelConfig(**merged)
    cfg.validate()
    return cfg


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
