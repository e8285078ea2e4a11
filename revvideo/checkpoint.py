"""Training checkpoints: fvcore's ``Checkpointer`` with safe loading and atomic saving.

* Every file is read with ``torch.load(weights_only=True)`` (fvcore's loader does not pass
  it); a file that would need arbitrary unpickling is refused with a clear message.
* Files and the ``last_checkpoint`` tag are written to a temporary file in the same folder,
  flushed, then renamed, so an interrupted run resumes from the last complete checkpoint.
* Besides fvcore's ``{"model", "trainer", "iteration", ...}`` each file records
  ``model_config`` (the ``backbones.ModelConfig`` as a dict), which makes it a revvision
  checkpoint that ``backbones.load_checkpoint`` / ``load_pretrained`` (and so
  ``MODEL.WEIGHTS`` with ``MODEL.ARCH weights``) read directly.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Dict

import torch
from fvcore.common.checkpoint import Checkpointer

from backbones.checkpoint import CheckpointError, atomic_write


def safe_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it needs arbitrary unpickling, which "
                              f"could run code ({str(e).splitlines()[0]}). Only weights_only files "
                              "(tensors, numbers, strings, lists, dicts) are loaded.") from None


class VideoCheckpointer(Checkpointer):
    """fvcore ``Checkpointer`` that loads with ``weights_only=True`` and saves atomically."""

    def _load_file(self, f: str) -> Dict[str, Any]:
        data = safe_load(f)
        if not isinstance(data, dict) or "model" not in data:
            raise CheckpointError(f"{f} is not a training checkpoint of tools/train_video.py "
                                  "(no 'model' entry); pass other weights as MODEL.WEIGHTS")
        return data

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        config = getattr(self.model, "cfg", None)
        if dataclasses.is_dataclass(config):
            data["model_config"] = dataclasses.asdict(config)
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()))
