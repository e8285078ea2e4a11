"""The model zoo: named architectures as plain config data, and ``build``."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

from .mvit import ModelConfig, MViT

_MVIT_B_STAGES = dict(
    embed_dim=96, num_heads=1, depth=16,
    dim_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
    head_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
    pool_q_stride=[[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]],
)

_REV_CONFIGS: Dict[str, dict] = {
    # ImageNet-1K Rev-ViT (official REV_VIT_S / REV_VIT_B; L follows the ViT-L shape).
    "vit_s": dict(embed_dim=384, num_heads=6, depth=12, drop_path_rate=0.1),
    "vit_b": dict(embed_dim=768, num_heads=12, depth=12, drop_path_rate=0.2),
    "vit_l": dict(embed_dim=1024, num_heads=16, depth=24, drop_path_rate=0.2),
    # ImageNet-1K Rev-MViT-B (official REV_MVIT_B_16_CONV).
    "mvit_b": dict(
        _MVIT_B_STAGES, input_size=(224, 224), patch_kernel=(7, 7), patch_stride=(4, 4),
        patch_padding=(3, 3), pool_kv_stride_adaptive=[1, 4, 4], pool_kernel=(1, 3, 3),
        fusion="concat_linear_2", drop_path_rate=0.1),
    # Kinetics-400 Rev-MViT-B 16x4 (official REV_MVIT_B_16x4_CONV).
    "mvit_b_16x4": dict(
        _MVIT_B_STAGES, input_size=(16, 224, 224), patch_kernel=(3, 7, 7),
        patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), pool_kv_stride_adaptive=[1, 8, 8],
        pool_kernel=(3, 3, 3), separate_qkv=False, qkv_bias=False, sep_pos_embed=True,
        fusion="avg", drop_path_rate=0.05, head_dropout=0.5, num_classes=400),
}

MODEL_CONFIGS: Dict[str, dict] = {}
for _name, _cfg in _REV_CONFIGS.items():
    MODEL_CONFIGS[f"rev_{_name}"] = dict(_cfg, reversible=True)
    MODEL_CONFIGS[_name] = dict(_cfg, reversible=False)  # the non-reversible twin

_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def list_models() -> List[str]:
    return sorted(MODEL_CONFIGS)


def model_config(name: str, **overrides) -> ModelConfig:
    """The named architecture with ``overrides`` applied (any ``ModelConfig`` field)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown override(s) {unknown} for {name!r}; valid: {sorted(_FIELDS)}")
    cfg = ModelConfig(**{**MODEL_CONFIGS[name], **overrides})
    cfg.validate()
    return cfg


def build(name: str, rev_backprop: bool = True, recompute_transitions: bool = False,
          **overrides) -> MViT:
    """Build a zoo model, e.g. ``build("rev_vit_b", num_classes=10, depth=24)``.

    ``rev_backprop=False`` trains a reversible model with plain autograd through the very
    same blocks (for tests and comparisons); it has no effect on a non-reversible twin.
    ``recompute_transitions=True`` also recomputes Rev-MViT's stage transitions in
    backward (see ``MViT``).
    """
    return MViT(model_config(name, **overrides), rev_backprop=rev_backprop,
                recompute_transitions=recompute_transitions)


def build_from_config(cfg: ModelConfig, rev_backprop: bool = True,
                      recompute_transitions: bool = False) -> MViT:
    return MViT(cfg, rev_backprop=rev_backprop, recompute_transitions=recompute_transitions)
