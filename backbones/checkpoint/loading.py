"""Building and loading models from checkpoint files: ``load_pretrained``, ``load_checkpoint``."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from torch import nn

from ..errors import CheckpointError, KeyMismatchError
from ..mmpretrain import config_from_mmpretrain
from ..mvit import ModelConfig, MViT, plan_layers
from ..zoo import list_models, model_config, resolve_name
from .files import PathLike
from .formats import CONFIG_FIELDS, Checkpoint, read_checkpoint
from .pos_embed import drop_class_token, resize_pos_embeds

# Settings that only matter for training: a ``name`` may differ from an embedded config in these.
_TRAINING_FIELDS = {"input_size", "num_classes", "drop_path_rate", "dropout", "head_dropout"}
_MAX_LISTED = 50


class LoadReport(NamedTuple):
    """What ``load_checkpoint`` did: keys it could not load, and position embeddings it resized.

    ``mismatched`` holds ``(key, checkpoint_shape, model_shape)``.
    """

    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, tuple, tuple]]
    resized: List[Tuple[str, tuple, tuple]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def _listing(title: str, items: List[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "".join(f"    {s}\n" for s in shown).rstrip("\n") + more


def _load_into(model: MViT, ckpt: Checkpoint, strict: bool) -> LoadReport:
    """Load what fits; report the rest (an error if ``strict``, after loading, as torch does)."""
    state = drop_class_token(ckpt.state_dict, ckpt.config)
    resized = resize_pos_embeds(state, model, ckpt.config)
    own = model.state_dict()
    # load_state_dict refuses mis-shaped tensors even with strict=False: set them aside.
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    skip = {k for k, _, _ in mismatched}
    keys = model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
    missing = [k for k in keys.missing_keys if k not in skip]
    report = LoadReport(missing, list(keys.unexpected_keys), mismatched, resized)
    if not report.ok:
        parts = [f"the weights in {ckpt.path} ({ckpt.format} format) do not fit the model:"]
        if report.missing:
            parts.append(_listing("missing from the checkpoint", report.missing))
        if report.unexpected:
            parts.append(_listing("unexpected (not in the model)", report.unexpected))
        if mismatched:
            parts.append(_listing("shape mismatch (checkpoint vs model)",
                                  [f"{k}: {list(a)} vs {list(b)}" for k, a, b in mismatched]))
        message = "\n".join(parts)
        if strict:
            raise KeyMismatchError(message + "\n(strict=False loads the rest and reports these)",
                                   report.missing, report.unexpected, mismatched)
        warnings.warn(message, stacklevel=3)
    return report


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True) -> LoadReport:
    """Load the weights of any supported checkpoint file into an existing ``MViT``.

    Class-token keys and optimizer state are ignored; position embeddings are resized
    (bicubic over space, linear over time) to the model's token grid. Missing, unexpected
    or mis-shaped keys raise one ``KeyMismatchError`` listing them (like
    ``nn.Module.load_state_dict``, the weights that fit are loaded by then); with
    ``strict=False`` they are reported instead (a warning and the returned ``LoadReport``).
    """
    if not isinstance(model, MViT):
        raise TypeError(f"load_checkpoint expects a revvision MViT, got {type(model).__name__}")
    return _load_into(model, read_checkpoint(path), strict)


def _architecture(config: ModelConfig) -> Dict[str, Any]:
    """The fields that shape the network; settings with no effect on it (e.g. the fusion
    of a model without stage transitions) are left out."""
    view = {f: _normal(getattr(config, f)) for f in CONFIG_FIELDS if f not in _TRAINING_FIELDS}
    if not any(s.kind == "transition" for s in plan_layers(config)):
        del view["fusion"]
    if not (config.pool_q_stride or config.pool_kv_stride_adaptive):
        del view["pool_kernel"]
    return view


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _check_name(config: ModelConfig, name: str, path: str) -> None:
    mine, want = _architecture(config), _architecture(model_config(name))
    differ = [f"{f}: file {mine.get(f)!r}, {name} {want.get(f)!r}"
              for f in sorted(set(mine) | set(want)) if mine.get(f) != want.get(f)]
    if differ:
        raise CheckpointError(f"{path} holds a different architecture than {name!r}:\n  "
                              + "\n  ".join(differ))


def config_for(ckpt: Checkpoint, name: Optional[str] = None, **overrides) -> ModelConfig:
    """The architecture to build for ``ckpt``: its own config, else inferred or from ``name``."""
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown}; valid: {sorted(CONFIG_FIELDS)}")
    if name is not None:
        name = resolve_name(name)  # KeyError for unknown names
    if ckpt.config is not None:
        if name is not None:
            _check_name(ckpt.config, name, ckpt.path)
        config = dataclasses.replace(ckpt.config, **overrides)
    elif ckpt.format == "mmpretrain":
        try:
            config = config_from_mmpretrain(ckpt.state_dict, name, **overrides)
        except ValueError as e:
            raise CheckpointError(f"{ckpt.path} (mmpretrain format): {e}") from None
    elif name is not None:
        head = ckpt.state_dict.get("head.projection.weight")
        classes = {"num_classes": head.shape[0]} if head is not None else {}
        config = model_config(name, **{**classes, **overrides})
    else:
        raise CheckpointError(f"{ckpt.path} is a bare state dict that does not say which "
                              f"architecture it is: pass name=... (one of {', '.join(list_models())})")
    config.validate()
    return config


def model_from_checkpoint(ckpt: Checkpoint, name: Optional[str] = None, *, strict: bool = True,
                          rev_backprop: bool = True, recompute_transitions: bool = False,
                          **overrides) -> MViT:
    """``load_pretrained`` for an already read ``Checkpoint``."""
    model = MViT(config_for(ckpt, name, **overrides), rev_backprop=rev_backprop,
                 recompute_transitions=recompute_transitions)
    _load_into(model, ckpt, strict)
    return model


def load_pretrained(path: PathLike, name: Optional[str] = None, *, strict: bool = True,
                    rev_backprop: bool = True, recompute_transitions: bool = False,
                    **overrides) -> MViT:
    """Build the architecture a checkpoint file holds and load its weights.

    The architecture comes from the file's embedded config (official ``.pyth``, revvision
    checkpoints), from its tensors (mmpretrain; heads from ``name`` or the zoo), or from
    ``name`` (bare state dicts). ``overrides`` are ``ModelConfig`` fields, e.g.
    ``input_size=(256, 256)`` (position embeddings are resized) or ``drop_path_rate=0.1``
    for fine-tuning. Given with an embedded config, ``name`` must agree with it. The model
    is returned in training mode, like any new module: call ``.eval()`` to evaluate.
    ``rev_backprop`` and ``recompute_transitions`` are as for ``backbones.build``.
    """
    return model_from_checkpoint(read_checkpoint(path), name, strict=strict,
                                 rev_backprop=rev_backprop,
                                 recompute_transitions=recompute_transitions, **overrides)
