"""Rev-MViT / Rev-ViT (and their twins) as Detectron2 backbones.

``StageBackbone`` exposes the per-stage maps of any ``backbones.MViT`` as Detectron2
features named by stride (``scale2`` = 1/4 ... ``scale5`` = 1/32). Four builders are
registered in ``BACKBONE_REGISTRY``:

=====================================  ==========================================
``build_rev_mvit_fpn_backbone``        Rev-MViT stages 1/4..1/32 -> Detectron2's FPN
``build_mvit_fpn_backbone``            the non-reversible MViT twin, same FPN
``build_rev_vit_simple_fpn_backbone``  Rev-ViT 1/16 map -> simple feature pyramid
``build_vit_simple_fpn_backbone``      the non-reversible ViT twin, same pyramid
=====================================  ==========================================

All four emit ``p2``..``p6`` (strides 4..64), as ResNet-FPN does, so Detectron2's
Mask R-CNN heads need no change. Reversible stages output both streams concatenated
(Rev-MViT-B: 192/384/768/1536 channels; the twin 96/192/384/768).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

import backbones
from backbones import MViT, zoo
from backbones.config_keys import ConfigReader, model_config_from_cfg
from backbones.errors import ConfigError
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

from .config import RENAMED_KEYS

SIZE_DIVISIBILITY = 32


def stage_name(stride: int) -> str:
    return f"scale{int(math.log2(stride))}"


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map.

    Kept instead of ``detectron2.layers.LayerNorm``: that one is written with elementwise
    ops that keep three map-sized tensors per map for backward (Rev-MViT-B's four stage
    maps at 800x800: 165 MB per image, against 0.4 MB of statistics for the fused kernel
    here), and the reversible trunk exists to save that memory.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class StageBackbone(Backbone):
    """The stage maps of a ``backbones.MViT`` (image model) as a Detectron2 ``Backbone``.

    The classifier's final norm and head are dropped (unused parameters would break DDP
    with Detectron2's default ``find_unused_parameters=False``). Position
    embeddings are resized to each input's grid, so any input size works; inputs whose
    sides are not multiples of the largest stride give maps of ``ceil(side / stride)``.
    """

    def __init__(self, net: MViT, out_features: Optional[Sequence[str]] = None,
                 stage_norm: bool = True):
        super().__init__()
        if net.cfg.is_video:
            raise ConfigError("detection backbones need an image model, got a video config "
                              f"with input_size={net.cfg.input_size}")
        net.norm = nn.Identity()
        net.head = nn.Identity()
        self.net = net
        names = [stage_name(s) for s in net.stage_strides]
        out_features = list(out_features or names)
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ConfigError(f"out_features {unknown} not produced by this backbone; "
                              f"its stages are {names} (strides {net.stage_strides})")
        self._stage_index = {name: i for i, name in enumerate(names)}
        self._out_features = out_features
        self._out_feature_channels = {n: net.stage_channels[self._stage_index[n]]
                                      for n in out_features}
        self._out_feature_strides = {n: net.stage_strides[self._stage_index[n]]
                                     for n in out_features}
        self.norms = nn.ModuleDict({
            n: ChannelLayerNorm(self._out_feature_channels[n], eps=1e-6) if stage_norm
            else nn.Identity() for n in out_features})

    @property
    def size_divisibility(self) -> int:
        return SIZE_DIVISIBILITY

    @property
    def rev_backprop(self) -> bool:
        return self.net.rev_backprop

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.net.forward_stages(x)
        return {n: self.norms[n](maps[self._stage_index[n]]) for n in self._out_features}


class SimpleFPN(SimpleFeaturePyramid):
    """Detectron2's ViTDet simple feature pyramid, padding inputs to multiples of 32.

    (Detectron2's class reports its divisibility under a misspelt key that
    ``ImageList.from_tensors`` never reads, so without ``square_pad`` inputs stay unpadded.)
    """

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}


def build_net(cfg, reversible: bool, family: str, in_chans: int = 3) -> MViT:
    """The ``backbones`` model that ``MODEL.ARCH`` and ``MVIT.*`` describe (the same keys as
    revvideo, read by ``backbones.config_keys``), in the family ("mvit" or "vit") and
    reversibility of the registered backbone."""
    keys = ConfigReader(cfg, RENAMED_KEYS)
    arch = keys.get("MODEL.ARCH")
    try:
        name = zoo.variant(arch, reversible)
    except KeyError as e:
        raise ConfigError(f"MODEL.ARCH: {e.args[0]}") from None
    if zoo.family(name) != family:
        raise ConfigError(f"MODEL.ARCH={arch!r} is not a {family} architecture "
                          f"(the backbone {cfg.MODEL.BACKBONE.NAME} builds {family}_*)")
    config = model_config_from_cfg(
        keys, backbones.model_config(name), input_size=(cfg.MODEL.REVDET.INPUT_SIZE,) * 2,
        in_chans=in_chans, num_classes=1)  # the head is dropped; keep it tiny
    return backbones.build_from_config(
        config, rev_backprop=keys.get("MODEL.REV_BACKPROP"),
        recompute_transitions=keys.get("MODEL.RECOMPUTE_TRANSITIONS"))


def build_stage_backbone(cfg, input_shape: ShapeSpec, reversible: bool, family: str,
                         out_features: Optional[List[str]] = None) -> StageBackbone:
    """The bare stage maps (no pyramid); ``out_features=None``: every stage."""
    net = build_net(cfg, reversible, family, in_chans=input_shape.channels)
    return StageBackbone(net, out_features, stage_norm=cfg.MODEL.REVDET.STAGE_NORM)


def _fpn(cfg, input_shape: ShapeSpec, reversible: bool) -> FPN:
    in_features = list(cfg.MODEL.FPN.IN_FEATURES or cfg.MODEL.REVDET.OUT_FEATURES)
    bottom_up = build_stage_backbone(cfg, input_shape, reversible, "mvit", in_features)
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def _simple_fpn(cfg, input_shape: ShapeSpec, reversible: bool) -> SimpleFPN:
    net = build_stage_backbone(cfg, input_shape, reversible, "vit")
    name = net._out_features[-1]
    return SimpleFPN(
        net=net,
        in_feature=name,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=tuple(cfg.MODEL.REVDET.SFP_SCALE_FACTORS),
        top_block=LastLevelMaxPool(),
        norm=cfg.MODEL.REVDET.SFP_NORM,
    )


@BACKBONE_REGISTRY.register()
def build_rev_mvit_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Rev-MViT whose four stage outputs feed Detectron2's FPN (p2..p6)."""
    return _fpn(cfg, input_shape, reversible=True)


@BACKBONE_REGISTRY.register()
def build_mvit_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """The non-reversible MViT twin with Detectron2's FPN (p2..p6)."""
    return _fpn(cfg, input_shape, reversible=False)


@BACKBONE_REGISTRY.register()
def build_rev_vit_simple_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Rev-ViT's stride-16 map -> ViTDet-style simple feature pyramid (p2..p6)."""
    return _simple_fpn(cfg, input_shape, reversible=True)


@BACKBONE_REGISTRY.register()
def build_vit_simple_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """The non-reversible ViT twin with the same simple feature pyramid (p2..p6)."""
    return _simple_fpn(cfg, input_shape, reversible=False)


BACKBONE_NAMES = ("build_rev_mvit_fpn_backbone", "build_mvit_fpn_backbone",
                  "build_rev_vit_simple_fpn_backbone", "build_vit_simple_fpn_backbone")
