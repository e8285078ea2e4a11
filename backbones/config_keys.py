"""SlowFast-style config keys -> ``ModelConfig``: the one mapping every config reader uses.

A released checkpoint embeds a full SlowFast config; revdet and revvideo configs carry the
same ``MVIT.*`` / ``MODEL.*`` / ``DATA.*`` keys as overrides of a zoo architecture. All of
them are read here, from any node with mapping or attribute access (a yacs / Detectron2
``CfgNode``, a dict from ``yaml.safe_load``, a namespace), so ``backbones`` needs no config
library. Keys absent from a node keep the base architecture's value.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple

from .blocks import FUSIONS
from .errors import ConfigError
from .mvit import ModelConfig, plan_layers

_MISSING = object()


def _pairs(value) -> list:
    return [list(entry) for entry in value]


def _kernel3(value) -> tuple:
    return tuple(value) if len(value) == 3 else (1, *value)  # 2-D kernels act on one frame


# Key -> ModelConfig field. For these, None, 0 and [] also keep the base value (the config
# readers' "use the architecture's own" defaults).
SIZE_KEYS: Tuple[Tuple[str, str, Callable], ...] = (
    ("MVIT.EMBED_DIM", "embed_dim", int),
    ("MVIT.DEPTH", "depth", int),
    ("MVIT.NUM_HEADS", "num_heads", int),
    ("MVIT.MLP_RATIO", "mlp_ratio", float),
    ("MVIT.DIM_MUL", "dim_mul", _pairs),
    ("MVIT.HEAD_MUL", "head_mul", _pairs),
    ("MVIT.POOL_Q_STRIDE", "pool_q_stride", _pairs),
    ("MVIT.POOL_KV_STRIDE_ADAPTIVE", "pool_kv_stride_adaptive", list),
    ("MVIT.POOL_KVQ_KERNEL", "pool_kernel", _kernel3),
    ("MVIT.PATCH_KERNEL", "patch_kernel", tuple),
    ("MVIT.PATCH_STRIDE", "patch_stride", tuple),
    ("MVIT.PATCH_PADDING", "patch_padding", tuple),
    ("MODEL.NUM_CLASSES", "num_classes", int),
)
# Key -> field where False and 0 are values too (only None keeps the base value).
VALUE_KEYS: Tuple[Tuple[str, str, Callable], ...] = (
    ("MVIT.QKV_BIAS", "qkv_bias", bool),
    ("MVIT.SEPARATE_QKV", "separate_qkv", bool),
    ("MVIT.SEP_POS_EMBED", "sep_pos_embed", bool),
    ("MVIT.REV.ENABLE", "reversible", bool),
    ("MVIT.REV.PRE_Q_FUSION", "fusion", str),
    ("MVIT.DROPOUT_RATE", "dropout", float),
    ("MODEL.DROPOUT_RATE", "head_dropout", float),
)
# MVIT.DROPPATH_RATE: a negative rate keeps the architecture's own.


def mvit_overrides() -> Dict[str, Any]:
    """The ``MVIT`` node of an override-style config (revdet, revvideo): each architecture
    key at the value that keeps the zoo's (0, [], a negative DROPPATH_RATE)."""
    node: Dict[str, Any] = {key[len("MVIT."):]: convert(0) if convert in (int, float) else []
                            for key, _, convert in SIZE_KEYS if key.startswith("MVIT.")}
    node["DROPPATH_RATE"] = -1.0
    return node


# Settings of the official model that revvision does not implement, with the one value it
# accepts (the official configs of the released models all use it).
REQUIRED: Dict[str, Any] = {
    "MVIT.MODE": "conv",
    "MVIT.POOL_FIRST": False,
    "MVIT.RESIDUAL_POOLING": False,
    "MVIT.REL_POS_SPATIAL": False,
    "MVIT.REL_POS_TEMPORAL": False,
    "MVIT.NORM": "layernorm",
    "MVIT.NORM_STEM": False,
    "MVIT.USE_ABS_POS": True,
    "MVIT.USE_FIXED_SINCOS_POS": False,
    "MVIT.USE_MEAN_POOLING": False,
    "MVIT.REV.RES_PATH": "conv",
    "MVIT.REV.RESPATH_FUSE": "concat",
}

# SlowFast's own defaults (slowfast/config/defaults.py) for the keys above: what a SlowFast
# config that leaves a key out means.
SLOWFAST_DEFAULTS = ModelConfig(
    embed_dim=96, depth=16, num_heads=1, mlp_ratio=4.0, input_size=(8, 224, 224), in_chans=3,
    patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(2, 4, 4), num_classes=400,
    qkv_bias=True, separate_qkv=False, sep_pos_embed=False, pool_kernel=(3, 3, 3),
    fusion="avg", reversible=False, drop_path_rate=0.1, dropout=0.0, head_dropout=0.5)


class ConfigReader:
    """Reads dotted keys (``"MVIT.DEPTH"``) from a config node of any kind.

    ``renamed`` maps old key names to their new names: for one release an old key that is
    set (not None) still works, with a ``FutureWarning`` naming both.
    """

    def __init__(self, cfg, renamed: Optional[Mapping[str, str]] = None):
        self.cfg = cfg
        self.renamed = dict(renamed or {})

    def _lookup(self, key: str):
        node = self.cfg
        for part in key.split("."):
            if isinstance(node, Mapping):
                node = node.get(part, _MISSING)
            else:
                node = getattr(node, part, _MISSING)
            if node is _MISSING:
                return _MISSING
        return node

    def get(self, key: str, default=None):
        """The value of ``key`` (or of its set old name), else ``default``."""
        for old, new in self.renamed.items():
            value = self._lookup(old) if new == key else _MISSING
            if value is not _MISSING and value is not None:
                warnings.warn(f"config key {old} is deprecated and will be removed in the next "
                              f"release; use {new}", FutureWarning, stacklevel=2)
                return value
        value = self._lookup(key)
        return default if value is _MISSING else value


def _convert(key: str, convert: Callable, value):
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid value for {key}") from None


def check_supported(reader: ConfigReader) -> None:
    """Raise ``ConfigError`` naming the key for official settings revvision cannot build."""
    for key, value in REQUIRED.items():
        given = reader.get(key, value)
        if given != value:
            raise ConfigError(f"unsupported setting {key}={given!r}: revvision implements "
                              f"only {value!r}")
    if reader.get("MVIT.POOL_KV_STRIDE") and not reader.get("MVIT.POOL_KV_STRIDE_ADAPTIVE"):
        raise ConfigError("explicit MVIT.POOL_KV_STRIDE without MVIT.POOL_KV_STRIDE_ADAPTIVE is "
                          "not supported: give the first layer's k/v stride as "
                          "POOL_KV_STRIDE_ADAPTIVE")


def check_transitions(reader: ConfigReader, config: ModelConfig) -> None:
    """Check the keys that matter only where a reversible model has stage transitions.

    ``MVIT.REV.BUFFER_LAYERS`` is implied by the widths and strides: here every layer that
    changes them is a stage transition, so a list naming other layers cannot be built.
    ``MVIT.REV.PRE_Q_FUSION`` must be one revvision implements (a ViT never uses it).
    """
    derived = [i for i, spec in enumerate(plan_layers(config)) if spec.kind == "transition"]
    if derived and config.fusion not in FUSIONS:
        raise ConfigError(f"unsupported MVIT.REV.PRE_Q_FUSION={config.fusion!r}; revvision "
                          f"implements {', '.join(map(repr, FUSIONS))}")
    given = reader.get("MVIT.REV.BUFFER_LAYERS")
    if given is None or not config.reversible:
        return
    if sorted(int(i) for i in given) != derived:
        raise ConfigError(f"MVIT.REV.BUFFER_LAYERS={list(given)} must list exactly the layers "
                          f"that change resolution or width (DIM_MUL, HEAD_MUL, POOL_Q_STRIDE): "
                          f"{derived}")


def model_config_from_cfg(cfg, base: ModelConfig = SLOWFAST_DEFAULTS,
                          renamed: Optional[Mapping[str, str]] = None,
                          **fixed) -> ModelConfig:
    """The ``ModelConfig`` that SlowFast-style keys in ``cfg`` describe on top of ``base``.

    ``base`` is a zoo architecture for override-style configs (revdet, revvideo) or
    ``SLOWFAST_DEFAULTS`` for a full SlowFast config (a released checkpoint's ``cfg``).
    ``fixed`` fields win over the config (e.g. revdet's ``input_size``). Unsupported or
    contradictory settings raise ``ConfigError`` naming the key.
    """
    reader = cfg if isinstance(cfg, ConfigReader) else ConfigReader(cfg, renamed)
    check_supported(reader)
    values: Dict[str, Any] = {}
    for key, field, convert in SIZE_KEYS:
        value = reader.get(key)
        if value not in (None, 0, [], ()):
            values[field] = _convert(key, convert, value)
    for key, field, convert in VALUE_KEYS:
        value = reader.get(key)
        if value is not None:
            values[field] = _convert(key, convert, value)
    rate = reader.get("MVIT.DROPPATH_RATE")
    if rate is not None and _convert("MVIT.DROPPATH_RATE", float, rate) >= 0:
        values["drop_path_rate"] = float(rate)
    crop = reader.get("DATA.TRAIN_CROP_SIZE")
    if crop:
        if reader.get("MVIT.PATCH_2D", not base.is_video):
            values["input_size"] = (crop, crop)
        else:
            frames = reader.get("DATA.NUM_FRAMES") or base.input_size[0]
            values["input_size"] = (frames, crop, crop)
    channels = reader.get("DATA.INPUT_CHANNEL_NUM")
    if channels:
        values["in_chans"] = int(channels[0])
    config = dataclasses.replace(copy.deepcopy(base), **{**values, **fixed})
    try:
        config.validate()
        check_transitions(reader, config)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"the MVIT.* / MODEL.* / DATA.* keys describe no valid model: {e}") from e
    return config
