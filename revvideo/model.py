"""The video classifier: a ``backbones`` Rev-MViT (or its twin) with its head, from the config.

The model is the ``backbones.MViT`` itself (``(B, 3, T, H, W)`` -> logits; LayerNorm, mean
over tokens, dropout, linear). ``MultiViewClassifier`` wraps it for evaluation: a batch of
videos with ``V`` views each -> softmax scores ``(B, V, K)``.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Dict, List, Optional, Union

import torch
from torch import nn

import backbones
from backbones.config_keys import model_config_from_cfg
from backbones.errors import ConfigError
from detectron2.utils.file_io import PathManager

from .transforms import NormalizeClips

logger = logging.getLogger(__name__)


def local_weights(path: str) -> str:
    """A local copy of weights on any storage Detectron2's ``PathManager`` has a handler for
    (as its checkpointer does), e.g. the last checkpoint of a non-local OUTPUT_DIR; local
    paths and http(s) URLs (which ``backbones`` downloads itself) are returned as given."""
    if not path or os.path.exists(path) or backbones.checkpoint.files.is_url(path):
        return path
    try:
        return PathManager.get_local_path(path)
    except (OSError, ValueError):  # no handler took it: the loader names the missing file
        return path


def model_config(cfg) -> backbones.ModelConfig:
    """The zoo architecture ``MODEL.ARCH`` with the ``MVIT.*`` / ``MODEL.*`` / ``DATA.*`` keys
    applied (0 or [] keep the zoo value; read by ``backbones.config_keys``, as revdet does)."""
    try:
        base = backbones.model_config(cfg.MODEL.ARCH)
    except KeyError as e:
        raise ConfigError(f"MODEL.ARCH: {e.args[0]} (or 'weights')") from None
    return model_config_from_cfg(cfg, base)


def build_model(cfg, weights: Optional[str] = None, allow_new_head: bool = False) -> backbones.MViT:
    """The classifier ``cfg`` describes, with ``weights`` (default ``MODEL.WEIGHTS``) loaded.

    ``MODEL.ARCH weights`` builds the architecture stored in the weights file (an official
    ``.pyth`` or a revvision checkpoint) instead of a zoo name with ``MVIT.*`` overrides.
    Weights must fit exactly (``backbones.KeyMismatchError`` lists what does not), except
    that with ``allow_new_head`` (training) a classifier head of another size is left
    freshly initialised, e.g. to fine-tune Kinetics-400 weights on Kinetics-600.
    """
    weights = local_weights(cfg.MODEL.WEIGHTS if weights is None else weights)
    rev_options = dict(rev_backprop=cfg.MODEL.REV_BACKPROP,
                       recompute_transitions=cfg.MODEL.RECOMPUTE_TRANSITIONS)
    if cfg.MODEL.ARCH == "weights":
        if not weights:
            raise ConfigError("MODEL.ARCH 'weights' builds the architecture stored in "
                              "MODEL.WEIGHTS, which is empty")
        model = backbones.load_pretrained(weights, **rev_options)
        logger.info(f"Built the architecture stored in {weights}: {_describe(model)}")
        if model.cfg.num_classes != cfg.MODEL.NUM_CLASSES:
            raise backbones.CheckpointError(
                f"{weights} classifies {model.cfg.num_classes} classes but MODEL.NUM_CLASSES "
                f"is {cfg.MODEL.NUM_CLASSES}")
        return model
    model = backbones.build_from_config(model_config(cfg), **rev_options)
    logger.info(f"Built {cfg.MODEL.ARCH}: {_describe(model)}")
    if weights:
        try:
            backbones.load_checkpoint(model, weights, strict=True)
        except backbones.KeyMismatchError as e:
            head_only = (not e.missing and not e.unexpected
                         and all(k.startswith("head.") for k, _, _ in e.mismatched))
            if not (allow_new_head and head_only):
                raise backbones.KeyMismatchError(
                    f"{e}\n(to use a checkpoint of another architecture, set MODEL.ARCH "
                    f"weights to build the one stored in the file)", e.missing, e.unexpected,
                    e.mismatched) from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                backbones.load_checkpoint(model, weights, strict=False)
            logger.warning(f"Loaded {weights} except its classifier head "
                           f"({', '.join(f'{k} {list(a)}' for k, a, _ in e.mismatched)}), which "
                           f"does not fit {cfg.MODEL.NUM_CLASSES} classes: the head starts fresh")
            return model
        logger.info(f"Loaded weights from {weights}")
    return model


def _describe(model: backbones.MViT) -> str:
    c = model.cfg
    params = sum(p.numel() for p in model.parameters())
    kind = "reversible" if c.reversible else "non-reversible"
    return (f"{kind}, embed_dim {c.embed_dim}, depth {c.depth}, input {tuple(c.input_size)}, "
            f"{c.num_classes} classes, {params / 1e6:.2f}M parameters")


class MultiViewClassifier(nn.Module):
    """Evaluation wrapper: a test batch of ``B`` videos with ``V`` views each -> softmax
    scores ``(B, V, K)``. A batch is the test loader's list of samples (Detectron2's
    convention; each ``video`` ``(V, C, T, H, W)``) or a collated ``{"video": (B, V, C, T,
    H, W)}``. ``normalize`` (``revvideo.multiview.TestViews.normalize``) makes the loader's
    uint8 views the model's input on the device, each video written straight into the
    float batch."""

    def __init__(self, model: nn.Module, device: torch.device, normalize: Optional[NormalizeClips] = None):
        super().__init__()
        self.model, self.device, self.normalize = model, device, normalize

    def forward(self, batch: Union[Dict, List[Dict]]) -> torch.Tensor:
        videos = self._videos(batch)
        b, v = videos.shape[:2]
        logits = self.model(videos.flatten(0, 1))
        return torch.softmax(logits.float(), dim=-1).view(b, v, -1)

    def _videos(self, batch: Union[Dict, List[Dict]]) -> torch.Tensor:
        if isinstance(batch, dict):
            videos = batch["video"].to(self.device, non_blocking=True)
            return videos if self.normalize is None else self.normalize(videos)
        views = [sample["video"] for sample in batch]
        if self.normalize is None:
            return torch.stack(views).to(self.device, non_blocking=True)
        return self.normalize.stacked(views, self.device)
