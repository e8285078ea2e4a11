"""The official (SlowFast) Rev-ViT / Rev-MViT format: its config and its key names.

Released ``.pyth`` files embed the full SlowFast config as a YAML string; this module maps
the parts that define the architecture onto a ``ModelConfig`` and renames keys both ways.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

from .mvit import ModelConfig

OFFICIAL_PREFIX = "rev_backbone.layers."
OUR_PREFIX = "layers."
# Keys the official model may carry that have no counterpart here (class token variants).
IGNORED_KEYS = ("cls_token", "pos_embed_class")

# Settings the official code supports that these models do not implement, with the value
# they must have.
_REQUIRED = {
    ("MVIT", "MODE"): "conv",
    ("MVIT", "POOL_FIRST"): False,
    ("MVIT", "RESIDUAL_POOLING"): False,
    ("MVIT", "REL_POS_SPATIAL"): False,
    ("MVIT", "REL_POS_TEMPORAL"): False,
    ("MVIT", "NORM"): "layernorm",
    ("MVIT", "NORM_STEM"): False,
    ("MVIT", "USE_ABS_POS"): True,
    ("MVIT", "USE_FIXED_SINCOS_POS"): False,
    ("MVIT", "USE_MEAN_POOLING"): False,
}


def config_from_official(cfg: Mapping) -> ModelConfig:
    """``ModelConfig`` for a SlowFast config dict (``yaml.safe_load`` of a checkpoint's ``cfg``)."""
    mvit, data, model = cfg["MVIT"], cfg["DATA"], cfg["MODEL"]
    for (section, key), value in _REQUIRED.items():
        if key in cfg[section] and cfg[section][key] != value:
            raise ValueError(f"unsupported official setting {section}.{key}={cfg[section][key]!r} "
                             f"(revvision implements {value!r})")
    rev = mvit.get("REV", {}).get("ENABLE", False)
    if rev and mvit["REV"].get("RES_PATH", "conv") != "conv":
        raise ValueError(f"unsupported MVIT.REV.RES_PATH={mvit['REV']['RES_PATH']!r}")
    kernel = list(mvit["PATCH_KERNEL"])
    is_2d = mvit.get("PATCH_2D", False)
    crop = data["TRAIN_CROP_SIZE"]
    input_size = (crop, crop) if is_2d else (data["NUM_FRAMES"], crop, crop)
    adaptive = mvit.get("POOL_KV_STRIDE_ADAPTIVE")
    if adaptive is None and mvit.get("POOL_KV_STRIDE"):
        raise ValueError("explicit MVIT.POOL_KV_STRIDE without POOL_KV_STRIDE_ADAPTIVE is not supported")
    pool_kernel = list(mvit.get("POOL_KVQ_KERNEL") or [3, 3, 3])
    if len(pool_kernel) == 2:
        pool_kernel = [1] + pool_kernel
    config = ModelConfig(
        embed_dim=mvit["EMBED_DIM"], depth=mvit["DEPTH"], num_heads=mvit["NUM_HEADS"],
        mlp_ratio=mvit["MLP_RATIO"], input_size=input_size,
        in_chans=data.get("INPUT_CHANNEL_NUM", [3])[0],
        patch_kernel=tuple(kernel), patch_stride=tuple(mvit["PATCH_STRIDE"]),
        patch_padding=tuple(mvit["PATCH_PADDING"]), num_classes=model["NUM_CLASSES"],
        qkv_bias=mvit["QKV_BIAS"], separate_qkv=mvit.get("SEPARATE_QKV", False),
        sep_pos_embed=mvit["SEP_POS_EMBED"], dim_mul=mvit["DIM_MUL"], head_mul=mvit["HEAD_MUL"],
        pool_q_stride=mvit["POOL_Q_STRIDE"], pool_kv_stride_adaptive=adaptive,
        pool_kernel=tuple(pool_kernel),
        fusion=mvit.get("REV", {}).get("PRE_Q_FUSION", "avg"), reversible=rev,
        drop_path_rate=mvit["DROPPATH_RATE"], dropout=mvit.get("DROPOUT_RATE", 0.0),
        head_dropout=model.get("DROPOUT_RATE", 0.0),
    )
    return config


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
