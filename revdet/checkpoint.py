"""Checkpoints for detection: safe loading, ImageNet backbone conversion, atomic saving.

``RevDetCheckpointer`` is a drop-in ``DetectionCheckpointer`` that

* loads every file without arbitrary unpickling: ``.pth``/``.pyth`` with
  ``torch.load(weights_only=True)``, Detectron2 model-zoo ``.pkl`` files with an unpickler
  that admits numpy arrays and plain containers only;
* recognises a classification checkpoint of a ``backbones`` model -- an official
  Rev-ViT / Rev-MViT ``.pyth`` (``{"epoch", "model_state", "cfg"}``), a revvision
  checkpoint, an mmpretrain Rev-ViT or a bare state dict (read by
  ``backbones.checkpoint.read_state_dict``) -- and converts it on the fly: keys moved into the
  detector's backbone namespace, the classifier ``head.*`` and final ``norm.*`` dropped, the
  position embedding resized when the detector's pretraining grid differs, and any other
  mismatch reported as one error naming the file;
* takes ``http(s)://`` URLs, downloaded once into revvision's cache
  (``backbones.checkpoint.download``);
* writes checkpoints atomically through ``path_manager``, as every revvision checkpointer
  does (``revvision.checkpointer.SafeCheckpointer``), so an interrupted run resumes with
  ``--resume`` from the last complete file.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from backbones import ModelConfig, MViT
from backbones.checkpoint import CheckpointError, download, is_url, load_file, read_state_dict
from backbones.checkpoint.pos_embed import resize_pos_embeds
from detectron2.checkpoint import DetectionCheckpointer
from revvision.checkpointer import SafeCheckpointer

logger = logging.getLogger(__name__)

# A key only a classifier checkpoint of a backbones model has: revvision / official names
# (top level of the classifier's state dict) or mmpretrain's Rev-ViT names. (A Detectron2
# checkpoint holds "backbone.bottom_up.net.patch_embed.proj.weight" and the like.)
_CLASSIFIER_MARKERS = ("patch_embed.proj.weight", "backbone.patch_embed.projection.weight")


def _model_state(data: Any) -> Any:
    if isinstance(data, Mapping):
        for key in ("model_state", "model", "state_dict"):
            if isinstance(data.get(key), Mapping):
                return data[key]
    return data


def is_backbone_state(state: Any) -> bool:
    """True for the state dict of a ``backbones`` classifier (revvision, official or
    mmpretrain names), as opposed to a detector's."""
    return isinstance(state, Mapping) and any(k in state for k in _CLASSIFIER_MARKERS)


def find_backbone_nets(model: nn.Module) -> List[Tuple[str, MViT]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MViT)]


def the_backbone(model: nn.Module, path: str) -> Tuple[str, MViT]:
    """The one revvision backbone in ``model``: its name (state-dict prefix) and module."""
    nets = find_backbone_nets(model)
    if len(nets) != 1:
        raise CheckpointError(f"cannot load backbone checkpoint {path}: the model has {len(nets)} "
                              "revvision backbones (expected one)")
    return nets[0]


def backbone_to_detection(state: Mapping[str, torch.Tensor], ckpt_cfg: Optional[ModelConfig],
                          model: nn.Module, path: str) -> Dict[str, torch.Tensor]:
    """Move a classifier state dict into ``model``'s backbone namespace: the classifier
    ``head.*`` and final ``norm.*`` dropped, position embeddings resized to the backbone's
    pretraining grid. Whether every key then fits is checked when it is loaded
    (``RevDetCheckpointer._load_model``)."""
    prefix, net = the_backbone(model, path)
    if ckpt_cfg is not None and ckpt_cfg.reversible != net.cfg.reversible:
        kind = {True: "reversible", False: "non-reversible"}
        raise CheckpointError(f"{path} holds a {kind[ckpt_cfg.reversible]} model but the backbone "
                              f"is {kind[net.cfg.reversible]} (check MODEL.BACKBONE.NAME)")
    out = {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))}
    for key, before, after in resize_pos_embeds(out, net, ckpt_cfg):
        logger.info(f"Resized {key} of {path} from {list(before)} to {list(after)}")
    base = prefix + "." if prefix else ""
    return {base + k: v for k, v in out.items()}


def check_backbone_keys(keys: Any, model: nn.Module, path: str) -> None:
    """One error naming ``path`` if a converted backbone checkpoint did not fit exactly.

    ``keys`` is the key report of fvcore's ``_load_model`` (``load_state_dict``'s
    ``_IncompatibleKeys`` plus ``incorrect_shapes``) for the whole detector; only the
    backbone's own keys count as missing."""
    prefix, net = the_backbone(model, path)
    base = prefix + "." if prefix else ""
    shapes = {k: (a, b) for k, a, b in keys.incorrect_shapes}  # fvcore: not loaded, so missing
    missing = sorted(k[len(base):] for k in keys.missing_keys
                     if k.startswith(base) and k not in shapes)
    unexpected = sorted(k[len(base):] for k in keys.unexpected_keys)  # all converted: in base
    mismatched = sorted(f"{k[len(base):]}: checkpoint {a} vs model {b}"
                        for k, (a, b) in shapes.items())
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing in the checkpoint", missing),
                             ("not in the backbone", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" ... (+{len(items) - 5})" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"backbone checkpoint {path} does not match the detector's backbone "
                              f"({net.cfg.embed_dim}-dim, depth {net.cfg.depth}): "
                              + "; ".join(parts))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, scalars and builtin containers; refuses every other global."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def load_pkl(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: {e} (only numpy arrays and plain "
                              "containers are unpickled)") from None


class RevDetCheckpointer(DetectionCheckpointer, SafeCheckpointer):
    """``DetectionCheckpointer`` with safe loading, backbone conversion and atomic saving.

    Detectron2's handling of formats and URLs comes first in the method order, then
    ``SafeCheckpointer``'s atomic ``save`` and its check for missing files; every
    ``.pth``/``.pyth`` is read by the same ``backbones.checkpoint.load_file``."""

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return super().load(download(path) if is_url(path) else path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            data = load_pkl(filename)
            if "model" in data and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            blobs = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            loaded = self._torch_load(filename)
            if loaded.get("__author__") == "revvision":
                return loaded
            if "model_state" not in loaded.get("model", {}):
                raise CheckpointError(f"cannot load {filename}: a .pyth file must be an official "
                                      "Rev-ViT/Rev-MViT or a pycls checkpoint with 'model_state'")
            state = {k: v for k, v in loaded["model"]["model_state"].items()
                     if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        data = load_file(f)
        if is_backbone_state(_model_state(data)):
            state, ckpt_cfg = read_state_dict(f)
            converted = backbone_to_detection(state, ckpt_cfg, self.model, f)
            self.logger.info(f"Converted backbone checkpoint {f}: {len(converted)} tensors "
                             "into the detector's backbone")
            return {"model": converted, "__author__": "revvision", "matching_heuristics": False,
                    "backbone_checkpoint": f}
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint {f} holds a {type(data).__name__}, not a dict")
        return data if "model" in data else {"model": data}

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        source = checkpoint.pop("backbone_checkpoint", None)  # set by _torch_load
        keys = super()._load_model(checkpoint)
        if source is not None:
            check_backbone_keys(keys, self.model, source)
        return keys
