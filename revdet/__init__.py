"""revdet: Rev-MViT / Rev-ViT (and their non-reversible twins) as Detectron2 backbones.

Importing it is all a Detectron2 user needs:

    import revdet
    from detectron2.config import get_cfg
    cfg = revdet.add_revdet_config(get_cfg())
    cfg.merge_from_file("configs/coco_revmvit.yaml")
    model = detectron2.modeling.build_model(cfg)

On import it registers four backbones in ``BACKBONE_REGISTRY`` (``revdet.backbone``), the
synthetic ``shapes_train`` / ``shapes_val`` datasets (``revdet.shapes``), and gives fvcore's
FLOP counter the fused-attention handle, so that ``detectron2.utils.analysis`` counts these
backbones fully (``backbones.flops.register_fvcore_handles``: additive). It patches nothing
else: safe checkpoint loading is a property of ``RevDetCheckpointer``.
"""

from backbones.flops import register_fvcore_handles

from .backbone import (BACKBONE_NAMES, SimpleFPN, StageBackbone,
                       build_mvit_fpn_backbone, build_rev_mvit_fpn_backbone,
                       build_rev_vit_simple_fpn_backbone, build_vit_simple_fpn_backbone)
from .checkpoint import RevDetCheckpointer
from .config import add_revdet_config
from .data import DatasetError, RevDetDatasetMapper, check_datasets
from .shapes import ShapesSpec, register_shapes, register_shapes_from_config


def _register_default_shapes() -> None:
    from detectron2.config import get_cfg

    register_shapes_from_config(add_revdet_config(get_cfg()))


_register_default_shapes()

register_fvcore_handles()  # Detectron2's FLOP tools then count fused attention

__all__ = [
    "BACKBONE_NAMES", "DatasetError", "RevDetCheckpointer", "RevDetDatasetMapper", "ShapesSpec",
    "SimpleFPN", "StageBackbone", "add_revdet_config", "build_mvit_fpn_backbone",
    "build_rev_mvit_fpn_backbone", "build_rev_vit_simple_fpn_backbone",
    "build_vit_simple_fpn_backbone", "check_datasets", "register_shapes",
    "register_shapes_from_config",
]
