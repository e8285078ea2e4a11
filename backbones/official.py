"""The official (SlowFast) Rev-ViT / Rev-MViT format: its config and its key names.

Released ``.pyth`` files embed the full SlowFast config as a YAML string; its architecture
keys map onto a ``ModelConfig`` through ``config_keys``; this module renames state-dict keys
both ways and writes the SlowFast config of a ``ModelConfig``.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

from .config_keys import SLOWFAST_DEFAULTS, model_config_from_cfg
from .mvit import ModelConfig

OFFICIAL_PREFIX = "rev_backbone.layers."
OUR_PREFIX = "layers."
# Keys the official model may carry that have no counterpart here (class token variants).
IGNORED_KEYS = ("cls_token", "pos_embed_class")


def config_from_official(cfg: Mapping) -> ModelConfig:
    """``ModelConfig`` for a SlowFast config dict (``yaml.safe_load`` of a checkpoint's ``cfg``).

    Keys the dict leaves out mean SlowFast's defaults, as they do in SlowFast.
    """
    return model_config_from_cfg(cfg, SLOWFAST_DEFAULTS)


def from_official_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official key names -> revvision key names (class-token keys dropped)."""
    out = {}
    for key, value in state.items():
        if key in IGNORED_KEYS:
            continue
        if key.startswith(OFFICIAL_PREFIX):
            key = OUR_PREFIX + key[len(OFFICIAL_PREFIX):]
        out[key] = value
    return out


def to_official_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(OFFICIAL_PREFIX + k[len(OUR_PREFIX):] if k.startswith(OUR_PREFIX) else k): v
            for k, v in state.items()}


def config_to_official(config: ModelConfig) -> Dict[str, Dict]:
    """The architecture-defining part of a SlowFast config for ``config`` (plain data).

    The inverse of ``config_from_official``: dump it with ``yaml.safe_dump`` as a checkpoint's
    ``cfg``; merged onto SlowFast's defaults it builds the same model. Only square inputs can
    be expressed (SlowFast has one crop size).
    """
    from .mvit import plan_layers

    size = tuple(config.input_size)
    if size[-1] != size[-2]:
        raise ValueError(f"SlowFast configs need a square input, got input_size={size}")
    buffer_layers = [i for i, s in enumerate(plan_layers(config)) if s.kind == "transition"]
    mvit = {
        "MODE": "conv", "POOL_FIRST": False, "RESIDUAL_POOLING": False, "REL_POS_SPATIAL": False,
        "REL_POS_TEMPORAL": False, "NORM": "layernorm", "NORM_STEM": False, "USE_ABS_POS": True,
        "USE_FIXED_SINCOS_POS": False, "USE_MEAN_POOLING": False, "CLS_EMBED_ON": False,
        "EMBED_DIM": config.embed_dim, "DEPTH": config.depth, "NUM_HEADS": config.num_heads,
        "MLP_RATIO": float(config.mlp_ratio), "PATCH_2D": not config.is_video,
        "PATCH_KERNEL": list(config.patch_kernel), "PATCH_STRIDE": list(config.patch_stride),
        "PATCH_PADDING": list(config.patch_padding), "QKV_BIAS": config.qkv_bias,
        "SEPARATE_QKV": config.separate_qkv, "SEP_POS_EMBED": config.sep_pos_embed,
        "DIM_MUL": [list(e) for e in config.dim_mul], "HEAD_MUL": [list(e) for e in config.head_mul],
        "POOL_Q_STRIDE": [list(e) for e in config.pool_q_stride],
        "POOL_KV_STRIDE_ADAPTIVE": (list(config.pool_kv_stride_adaptive)
                                    if config.pool_kv_stride_adaptive else None),
        "POOL_KV_STRIDE": [],
        "POOL_KVQ_KERNEL": list(config.pool_kernel), "DROPPATH_RATE": config.drop_path_rate,
        "DROPOUT_RATE": config.dropout,
        "REV": {"ENABLE": config.reversible, "RES_PATH": "conv", "RESPATH_FUSE": "concat",
                "PRE_Q_FUSION": config.fusion, "BUFFER_LAYERS": buffer_layers},
    }
    data = {"TRAIN_CROP_SIZE": size[-1], "TEST_CROP_SIZE": size[-1],
            "NUM_FRAMES": size[0] if config.is_video else 1, "INPUT_CHANNEL_NUM": [config.in_chans]}
    model = {"MODEL_NAME": "MViT", "ARCH": "mvit", "NUM_CLASSES": config.num_classes,
             "DROPOUT_RATE": config.head_dropout}
    return {"MODEL": model, "MVIT": mvit, "DATA": data}
