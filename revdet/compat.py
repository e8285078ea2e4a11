"""The small runtime patches Detectron2 needs here, applied once when ``revdet`` is imported.

Only what was actually hit with torch 2.x / numpy 2 and the pure-Python detectron2:

1. ``fvcore.common.checkpoint.Checkpointer._load_file`` calls ``torch.load`` without
   ``weights_only`` (so its safety depends on torch's version default and on the
   ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` variable). It is replaced by a load that always
   passes ``weights_only=True`` and turns a refusal into one error naming the file.
   ``DetectionCheckpointer`` reaches it for every ``.pth``; revdet's own
   ``RevDetCheckpointer`` also covers ``.pkl`` and ``.pyth`` (see ``revdet.checkpoint``).

Not patched because nothing revdet runs reaches them: ``np.array(..., copy=False)`` in
``layers/mask_ops.py::paste_mask_in_image_old`` and ``evaluation/sem_seg_evaluation.py``,
``model_zoo.get_config_file`` (needs ``pkg_resources``; revdet ships its own base config).
``AMPTrainer`` asserts CUDA: ``revdet.engine`` falls back to ``SimpleTrainer`` on CPU.
"""

from __future__ import annotations

from typing import Any, Dict

_APPLIED = False


def safe_torch_load(path: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a file that would need
    arbitrary unpickling, or is corrupt, raises one ``CheckpointError`` naming it."""
    from backbones.checkpoint import load_file

    return load_file(path)


def _fvcore_load_file(self, f: str) -> Dict[str, Any]:
    return safe_torch_load(f)


def apply() -> None:
    """Install the patches (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from fvcore.common.checkpoint import Checkpointer

    Checkpointer._load_file = _fvcore_load_file
    _APPLIED = True
