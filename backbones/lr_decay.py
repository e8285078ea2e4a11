"""Layer-wise learning-rate decay (BEiT, MAE fine-tuning, ViTDet) for Rev-ViT / Rev-MViT.

Layers are numbered as in ViTDet: the patch and position embeddings are layer 0, block
``i`` of the ``L`` blocks (stage transitions included) is layer ``i + 1``, and everything
else -- the backbone's final norm and head, and whatever surrounds the backbone
(Detectron2's FPN or simple pyramid and heads, the video head) -- is layer ``L + 1``.
With decay ``d``, layer ``k`` trains with ``lr * d ** (L + 1 - k)``: the full LR at the
top, less and less towards the input. Parameters are found by name below each
``backbones.MViT`` inside the model, so the same function serves a bare classifier and a
Detectron2 detector.
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from .errors import UserError
from .mvit import MViT

_EMBEDDINGS = ("patch_embed.", "pos_embed")
# The names of an ``MViT``'s position-embedding parameters (SOLVER.*_POS_EMBED keys act on them).
POS_EMBED_NAMES = ("pos_embed", "pos_embed_spatial", "pos_embed_temporal")


def check_layer_decay(decay: float, key: str = "SOLVER.LAYER_DECAY") -> None:
    if not 0.0 < decay <= 1.0:
        raise UserError(f"{key} must be in (0, 1] (1 turns layer-wise LR decay off), got {decay!r}")


def layer_depth(name: str, num_layers: int) -> int:
    """The LR layer of a parameter of an ``MViT`` (its name relative to the model): 0 for the
    embeddings, ``i + 1`` for ``layers.i``, ``num_layers + 1`` for the rest (full LR)."""
    if name.startswith(_EMBEDDINGS):
        return 0
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def lr_scales(model: nn.Module, decay: float) -> Dict[str, float]:
    """LR multiplier of every parameter of the ``MViT`` backbones inside ``model``, keyed by
    the parameter's name in ``model``; parameters outside them are not listed (scale 1)."""
    check_layer_decay(decay)
    if decay == 1.0:
        return {}
    scales = {}
    for prefix, module in model.named_modules():
        if isinstance(module, MViT):
            num_layers = len(module.layers)
            for name, _ in module.named_parameters():
                full = f"{prefix}.{name}" if prefix else name
                scales[full] = decay ** (num_layers + 1 - layer_depth(name, num_layers))
    if not scales:
        raise UserError("SOLVER.LAYER_DECAY needs a Rev-ViT / Rev-MViT (or twin) backbone, "
                        f"but {type(model).__name__} contains none; set it to 1.0")
    return scales


def lr_factor_func(model: nn.Module, decay: float) -> Callable[[str], float]:
    """``lr_scales`` as the ``lr_factor_func`` of Detectron2's ``get_default_optimizer_params``:
    parameter name -> LR multiplier. (That function names a parameter of the root module
    ``.name``, so a bare classifier's names are looked up without the leading dot.)"""
    scales = lr_scales(model, decay)
    return lambda name: scales.get(name.lstrip("."), 1.0)
