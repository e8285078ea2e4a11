"""The training checkpointer both tools use: weights-only loading and atomic saving.

``SafeCheckpointer`` is fvcore's ``Checkpointer`` (what Detectron2's checkpointers and
hooks build on) with three properties of its own, rather than process-wide patches:

* every file is read by ``backbones.checkpoint.load_file``: ``torch.load(weights_only=True)``,
  so a file that would need arbitrary unpickling is refused, never executed; a missing,
  corrupt or unsafe file is one ``backbones.CheckpointError`` (a ``UserError``) naming it;
* checkpoints and the ``last_checkpoint`` tag are written under a temporary name and then
  moved into place, so a run interrupted mid-save resumes from the last complete file;
* files go through ``self.path_manager``, Detectron2's global ``PathManager``: an
  ``OUTPUT_DIR`` on any storage with an iopath handler registered there works.

It lives in ``revvision``, the package both tools' command lines already share, because
its two users may not import each other (``revvideo`` must not depend on ``revdet``'s
detection code) and ``backbones`` imports torch only. It needs fvcore and Detectron2's
``PathManager``, which ``revdet`` and ``revvideo`` need anyway; ``revvision/__init__``
imports nothing, so importing this module from either adapter makes no cycle.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, Optional

import torch
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from backbones.checkpoint import CheckpointError, CheckpointNotFoundError, atomic_write, load_file

# "scheme://...": a path an iopath handler serves; anything else is a local path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local(path: str) -> bool:
    return not _URI.match(path)


class SafeCheckpointer(Checkpointer):
    """fvcore ``Checkpointer`` that loads with ``weights_only=True`` and saves atomically
    through ``path_manager`` (see the module docstring)."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool = True,
                 **checkpointables: Any):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = PathManager  # where users register handlers for their storage

    # ------------------------------------------------------------------ loading
    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        if path and not os.path.isfile(path):
            local = self.path_manager.get_local_path(path)
            if not os.path.isfile(local):  # fvcore would assert
                raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
            path = local
        return super().load(path, *args, **kwargs)

    def _load_file(self, f: str) -> Dict[str, Any]:
        data = load_file(f)
        if not isinstance(data, dict) or "model" not in data:
            raise CheckpointError(f"{f} is not a training checkpoint (no 'model' entry); "
                                  "pass other weights as MODEL.WEIGHTS")
        return data

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        self._write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        self._write(os.path.join(self.save_dir, "last_checkpoint"),
                    lambda f: f.write(last_filename_basename.encode()))

    def _write(self, path: str, write: Callable[[Any], None]) -> None:
        """Write ``path`` through ``write(binary_file)``; a crash leaves the previous file.

        A local path gets a real atomic replace (``os.replace``). iopath has no atomic
        replace, so elsewhere the file is written under a temporary name, the old file
        removed and the new one moved into place: an interruption leaves either the old
        or the new complete file, or (between the last two steps) only the complete
        temporary one, never a partial file under the final name.
        """
        if is_local(path):
            atomic_write(path, write)
            return
        manager = self.path_manager
        manager.mkdirs(os.path.dirname(path))
        tmp = f"{path}.tmp"
        try:
            with manager.open(tmp, "wb") as f:
                write(f)
        except BaseException:
            if manager.exists(tmp):
                manager.rm(tmp)
            raise
        if manager.exists(path):
            manager.rm(path)
        if not manager.mv(tmp, path):
            raise OSError(f"cannot move {tmp} to {path}")


def last_checkpoint(save_dir: str) -> Optional[str]:
    """The checkpoint ``save_dir/last_checkpoint`` names (what ``--resume`` continues from),
    or None."""
    return SafeCheckpointer(nn.Module(), save_dir).get_checkpoint_file() or None
