"""The model zoo: named architectures as plain config data, and ``build``."""

from __future__ import annotations

import dataclasses
import warnings
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

# The non-reversible twin of each model: the same widths, depths and attention in standard
# one-stream pre-norm blocks, trained with plain autograd, for comparisons. The ViT twins are
# ViTs without a class token. The MViT twins are not the published MViT-B: they widen inside
# the attention and pool their skip connections with the attention's conv, as Rev-MViT's
# stage transitions do, where MViT-B widens in the MLP and max-pools its skips; hence
# "nonrev_".
TWIN_NAMES = {"vit_s": "vit_s", "vit_b": "vit_b", "vit_l": "vit_l",
              "mvit_b": "nonrev_mvit_b", "mvit_b_16x4": "nonrev_mvit_b_16x4"}
# The MViT twins' old names, kept for one release with a FutureWarning.
DEPRECATED_NAMES = {old: new for old, new in TWIN_NAMES.items() if old != new}

MODEL_CONFIGS: Dict[str, dict] = {}
_BASE_NAMES: Dict[str, str] = {}  # every name, old names and bare sizes -> its _REV_CONFIGS key
for _name, _cfg in _REV_CONFIGS.items():
    MODEL_CONFIGS[f"rev_{_name}"] = dict(_cfg, reversible=True)
    MODEL_CONFIGS[TWIN_NAMES[_name]] = dict(_cfg, reversible=False)
    _BASE_NAMES.update({_name: _name, f"rev_{_name}": _name, TWIN_NAMES[_name]: _name})

_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def list_models() -> List[str]:
    return sorted(MODEL_CONFIGS)


def resolve_name(name: str) -> str:
    """``name`` itself, or the current name of a deprecated one (with a ``FutureWarning``)."""
    if name in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[name]
        warnings.warn(f"model name {name!r} is deprecated and will be removed in the next "
                      f"release; use {new!r} (the non-reversible twin of Rev-MViT-B, not the "
                      f"published MViT-B)", FutureWarning, stacklevel=3)
        return new
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return name


def variant(name: str, reversible: bool) -> str:
    """The reversible model or the non-reversible twin of the architecture ``name`` names:
    any zoo name or a bare size (``"mvit_b"``, ``"vit_b"``), as Detectron2 backbones take it."""
    if name not in _BASE_NAMES:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    base = _BASE_NAMES[name]
    return f"rev_{base}" if reversible else TWIN_NAMES[base]


def family(name: str) -> str:
    """"vit" or "mvit": the kind of architecture ``name`` (any zoo name) is."""
    return _BASE_NAMES[name].split("_")[0]


def model_config(name: str, **overrides) -> ModelConfig:
    """The named architecture with ``overrides`` applied (any ``ModelConfig`` field)."""
    name = resolve_name(name)
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
