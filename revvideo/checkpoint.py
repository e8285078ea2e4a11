"""Training checkpoints of tools/train_video.py: a ``SafeCheckpointer`` that records the model.

Loading with ``weights_only=True`` and atomic saving come from
``revvision.checkpointer.SafeCheckpointer``. Besides fvcore's
``{"model", "trainer", "iteration", ...}`` each file records ``model_config`` (the
``backbones.ModelConfig`` as a dict), which makes it a revvision checkpoint that
``backbones.load_checkpoint`` / ``load_pretrained`` (and so ``MODEL.WEIGHTS`` with
``MODEL.ARCH weights``) read directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from revvision.checkpointer import SafeCheckpointer


class VideoCheckpointer(SafeCheckpointer):
    """``SafeCheckpointer`` whose files also carry the model's ``ModelConfig``."""

    def save(self, name: str, **kwargs: Any) -> None:
        config = getattr(self.model, "cfg", None)
        if dataclasses.is_dataclass(config):
            kwargs.setdefault("model_config", dataclasses.asdict(config))
        super().save(name, **kwargs)
