"""Compatibility of pytorchvideo 0.1.5 with the torchvision on this stack.

``pytorchvideo.transforms`` imports ``torchvision.transforms.functional_tensor``, a private
module torchvision renamed to ``_functional_tensor`` in 0.17 (and stopped aliasing later).
``apply()`` registers the renamed module under the old name in ``sys.modules``; it runs when
``revvideo`` is imported, which must therefore happen before the first
``pytorchvideo.transforms`` import. The public ``torchvision.transforms.functional`` is *not*
a substitute: its ``affine`` has a different signature, which breaks pytorchvideo's
ShearX/TranslateX augmentations.

Other pytorchvideo 0.1.5 problems revvideo works around where they are used rather than by
patching: the "torchvision" decoder skips every video with current torchvision (revvideo
always decodes with PyAV), ``MoveChannelRear/Front`` are broken (``Permute`` is used), and
``LabeledVideoDataset`` gives up after 10 consecutive unreadable videos and hides the reason
at debug level (``revvideo.data.VideoDataset`` skips them with a warning instead).
"""

from __future__ import annotations

import importlib
import sys

_OLD = "torchvision.transforms.functional_tensor"
_NEW = "torchvision.transforms._functional_tensor"


def apply() -> None:
    """Make ``import torchvision.transforms.functional_tensor`` work (idempotent)."""
    if _OLD in sys.modules:
        return
    try:
        importlib.import_module(_OLD)  # an older torchvision still ships it
        return
    except ImportError:
        pass
    sys.modules[_OLD] = importlib.import_module(_NEW)
