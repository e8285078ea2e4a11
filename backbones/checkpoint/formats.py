"""The three checkpoint layouts, told apart by their contents and normalised to revvision names.

* official SlowFast ``.pyth``: ``{"model_state", "cfg" (YAML string), "epoch", "optimizer_state"}``;
  the architecture comes from the embedded config;
* mmpretrain Rev-ViT: a bare state dict (or ``{"state_dict": ...}``) with ``backbone.*`` /
  ``head.fc.*`` names and fused ``qkv``; the architecture is read off the tensors;
* revvision: ``{"model": state_dict, "model_config": dataclasses.asdict(ModelConfig), ...}``,
  as written by ``save_checkpoint``.

A bare state dict in official or revvision names is accepted too (the architecture then
comes from a model name). The key renaming itself lives beside each layout's config
mapping (``backbones.official``, ``backbones.mmpretrain``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ..errors import CheckpointError
from ..mmpretrain import config_from_mmpretrain, from_mmpretrain_keys, is_mmpretrain
from ..mvit import ModelConfig
from ..official import OFFICIAL_PREFIX, config_from_official, from_official_keys
from .files import PathLike, load_file
from .pos_embed import drop_class_token

CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


@dataclass
class Checkpoint:
    """A checkpoint file's contents: weights in revvision names and, if known, the architecture."""

    path: str
    format: str  # "official" | "mmpretrain" | "revvision"
    state_dict: Dict[str, torch.Tensor]
    config: Optional[ModelConfig]  # None: the file does not say (bare state dict)
    extra: Dict[str, Any] = field(default_factory=dict)  # e.g. epoch, official_cfg


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        more = f" ... ({len(keys)} in all)" if len(keys) > 12 else ""
        return f"keys {[str(k) for k in keys[:12]]}{more}"
    return f"a {type(obj).__name__}"


def _without_ddp_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A copy without the ``module.`` prefix DistributedDataParallel adds to every key."""
    state = dict(state)
    consume_prefix_in_state_dict_if_present(state, "module.")
    return state


def config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """``ModelConfig`` from ``dataclasses.asdict`` output (lists back to tuples where declared)."""
    unknown = sorted(set(data) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown model_config field(s) {unknown}")
    values = {}
    for key, value in data.items():
        default = CONFIG_FIELDS[key].default
        values[key] = tuple(value) if isinstance(default, tuple) and value is not None else value
    config = ModelConfig(**values)
    config.validate()
    return config


def parse_checkpoint(obj: Any, path: PathLike = "<checkpoint>") -> Checkpoint:
    """Recognise the format of a loaded checkpoint object and normalise it."""
    path = os.fspath(path)
    if isinstance(obj, Mapping) and "model_state" in obj:  # official SlowFast
        state = obj["model_state"]
        if not _is_state_dict(state):
            raise CheckpointError(f"{path}: 'model_state' is not a state dict ({_describe(state)})")
        config, extra = None, {}
        if isinstance(obj.get("cfg"), str):
            import yaml  # only needed here: keeps `import backbones` torch-only

            try:
                config = config_from_official(yaml.safe_load(obj["cfg"]))
            except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
                raise CheckpointError(f"{path}: cannot use its embedded config: "
                                      f"{type(e).__name__}: {e}") from None
            extra["official_cfg"] = obj["cfg"]
        if "epoch" in obj:
            extra["epoch"] = obj["epoch"]
        state = from_official_keys(_without_ddp_prefix(state))
        return Checkpoint(path, "official", state, config, extra)

    if isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):  # revvision
        config = None
        if obj.get("model_config") is not None:
            try:
                config = config_from_dict(obj["model_config"])
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: invalid model_config: {e}") from None
        state = _without_ddp_prefix(obj["model"])
        if is_mmpretrain(state) or any(k.startswith(OFFICIAL_PREFIX) for k in state):
            raise CheckpointError(f"{path}: 'model' holds official or mmpretrain key names; "
                                  "revvision checkpoints use revvision names")
        extra = {k: obj[k] for k in ("epoch", "iteration", "official_cfg") if k in obj}
        return Checkpoint(path, "revvision", state, config, extra)

    if isinstance(obj, Mapping) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        obj = obj["state_dict"]  # mmengine's {"meta", "state_dict", ...} wrapper

    if _is_state_dict(obj):  # a bare state dict: tell the naming scheme by its keys
        state = _without_ddp_prefix(obj)
        if is_mmpretrain(state):
            try:
                state = from_mmpretrain_keys(state)
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}") from None
            return Checkpoint(path, "mmpretrain", state, None)
        if any(k.startswith(OFFICIAL_PREFIX) for k in state):
            return Checkpoint(path, "official", from_official_keys(state), None)
        if any(k.startswith("layers.") or k.startswith("patch_embed.") for k in state):
            return Checkpoint(path, "revvision", state, None)
    raise CheckpointError(
        f"{path}: unknown checkpoint format; expected an official .pyth ('model_state', 'cfg'), "
        f"a revvision checkpoint ('model', 'model_config') or an mmpretrain Rev-ViT state dict "
        f"('backbone.*', 'head.fc.*'), but found {_describe(obj)}")


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read any supported checkpoint file (see the module docstring)."""
    return parse_checkpoint(load_file(path), path)


def read_state_dict(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Optional[ModelConfig]]:
    """Weights of ``path`` in revvision key names, and its architecture if the file says.

    Class-token keys are dropped, as is a class-token row of an official ``pos_embed``.
    The config is ``None`` for a bare state dict, and for an mmpretrain file whose number
    of heads cannot be inferred (no zoo Rev-ViT of that width).
    """
    ckpt = read_checkpoint(path)
    config = ckpt.config
    if config is None and ckpt.format == "mmpretrain":
        try:
            config = config_from_mmpretrain(ckpt.state_dict)
        except ValueError:
            config = None
    return drop_class_token(ckpt.state_dict, config), config
