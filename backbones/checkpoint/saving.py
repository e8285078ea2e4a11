"""Writing revvision checkpoints: plain data only, so that they load with ``weights_only=True``."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from ..mvit import ModelConfig
from .files import PathLike, atomic_save

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size, torch.device)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse values ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold only tensors and "
                        "plain data (dicts, lists, numbers, strings) so that they load with "
                        "weights_only=True")


def save_checkpoint(path: PathLike, model: Union[nn.Module, Mapping[str, torch.Tensor]],
                    config: Optional[ModelConfig] = None, **extra) -> None:
    """Write a revvision checkpoint atomically (a temporary file in the same folder, then rename).

    ``model`` is an ``MViT`` (its config is stored) or a state dict in revvision names (pass
    ``config``). ``extra`` adds training state such as ``optimizer=opt.state_dict()``,
    ``epoch=3``; it must be plain data.
    """
    if isinstance(model, nn.Module):
        state = model.state_dict()
        config = config if config is not None else getattr(model, "cfg", None)
    else:
        state = dict(model)
    reserved = sorted({"model", "model_config"} & set(extra))
    if reserved:
        raise TypeError(f"{reserved} are written by save_checkpoint itself")
    payload: Dict[str, Any] = {"model": state}
    if config is not None:
        payload["model_config"] = dataclasses.asdict(config)
    payload.update(extra)
    _check_plain(payload, "checkpoint")
    atomic_save(payload, path)
