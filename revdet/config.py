"""Config keys revdet adds to Detectron2's yacs config.

    from detectron2.config import get_cfg
    import revdet
    cfg = get_cfg()
    revdet.add_revdet_config(cfg)
    cfg.merge_from_file("configs/coco_revmvit.yaml")

Every key has a default that leaves stock Detectron2 behaviour unchanged, so configs
written for plain Detectron2 still merge.
"""

from __future__ import annotations

import torch

from backbones import training
from backbones.config_keys import mvit_overrides
from detectron2.config import CfgNode as CN


# Keys of earlier releases -> their names now (shared with revvideo and SlowFast).
RENAMED_KEYS = {
    "MODEL.REVDET.ARCH": "MODEL.ARCH",
    "MODEL.REVDET.REV_BACKPROP": "MODEL.REV_BACKPROP",
    "MODEL.REVDET.RECOMPUTE_TRANSITIONS": "MODEL.RECOMPUTE_TRANSITIONS",
    "MODEL.REVDET.DROP_PATH_RATE": "MVIT.DROPPATH_RATE",
    **{f"MODEL.REVDET.{key}": f"MVIT.{key}" for key in (
        "EMBED_DIM", "DEPTH", "NUM_HEADS", "MLP_RATIO", "DIM_MUL", "HEAD_MUL", "POOL_Q_STRIDE",
        "POOL_KV_STRIDE_ADAPTIVE", "PATCH_KERNEL", "PATCH_STRIDE", "PATCH_PADDING")},
}


def add_revdet_config(cfg: CN) -> CN:
    """Add revdet's keys to ``cfg`` in place (idempotent) and return it."""
    if "REVDET" in cfg.MODEL:
        return cfg

    # ---------------------------------------------------------------- backbone
    # The same model keys as revvideo (read by backbones.config_keys). MODEL.ARCH names the
    # architecture in the `backbones` zoo (rev_mvit_b, rev_vit_s, rev_vit_b, rev_vit_l; a
    # bare size like mvit_b works too); the registered backbone chooses the family and
    # whether it is reversible (build_rev_mvit_fpn_backbone, build_mvit_fpn_backbone,
    # build_rev_vit_simple_fpn_backbone, build_vit_simple_fpn_backbone).
    cfg.MODEL.ARCH = "rev_mvit_b"
    # False trains a reversible backbone with plain autograd (same weights and outputs,
    # more memory); for comparisons.
    cfg.MODEL.REV_BACKPROP = True
    # With REV_BACKPROP, also recompute Rev-MViT's non-reversible stage transitions in
    # backward instead of storing their activations (backbones.MViT): less memory for one
    # extra forward of those few layers. False is the official model's behaviour.
    cfg.MODEL.RECOMPUTE_TRANSITIONS = False
    # Architecture overrides of the zoo model, with SlowFast's names (EMBED_DIM, DEPTH,
    # NUM_HEADS, MLP_RATIO, DIM_MUL, HEAD_MUL, POOL_Q_STRIDE, POOL_KV_STRIDE_ADAPTIVE,
    # POOL_KVQ_KERNEL, PATCH_KERNEL/STRIDE/PADDING, DROPPATH_RATE); 0 / [] keep the
    # architecture's own value, DROPPATH_RATE < 0 too.
    cfg.MVIT = CN(mvit_overrides())

    # Detection-only backbone keys.
    cfg.MODEL.REVDET = CN()
    # The image size the position embedding is laid out for (the pretraining size: its
    # grid is resized to each padded input at run time). Keep it at the checkpoint's
    # size (224 for the ImageNet models) when loading one through MODEL.WEIGHTS.
    cfg.MODEL.REVDET.INPUT_SIZE = 224
    # Stage maps returned (named by stride: scale2 = 1/4 ... scale5 = 1/32; a ViT has
    # only scale4), each after a LayerNorm over channels when STAGE_NORM.
    cfg.MODEL.REVDET.OUT_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    cfg.MODEL.REVDET.STAGE_NORM = True
    # Simple feature pyramid (ViT backbones): scales relative to the stride-16 map.
    cfg.MODEL.REVDET.SFP_SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    cfg.MODEL.REVDET.SFP_NORM = "LN"
    # Old names of the keys above (RENAMED_KEYS): still read for one release, with a warning.
    for old in RENAMED_KEYS:
        cfg.MODEL.REVDET[old.rsplit(".", 1)[1]] = None

    # --------------------------------------------------------------- optimizer
    cfg.SOLVER.OPTIMIZER = "SGD"  # SGD (Detectron2's) | ADAMW
    cfg.SOLVER.BETAS = (0.9, 0.999)  # AdamW
    # Weight decay of position embeddings (any parameter named pos_embed*); < 0 keeps WEIGHT_DECAY.
    cfg.SOLVER.WEIGHT_DECAY_POS_EMBED = -1.0
    # Layer-wise LR decay of Rev-ViT / Rev-MViT backbones (backbones.lr_decay): block i of
    # L trains with BASE_LR * LAYER_DECAY ** (L - i), the embeddings with ** (L + 1); the
    # pyramid and heads with BASE_LR. 1.0 = off; ViTDet uses 0.7 for ViT-B.
    cfg.SOLVER.LAYER_DECAY = 1.0
    # Gradient accumulation: each iteration (optimizer step) runs ACCUM_ITER micro-batches of
    # IMS_PER_BATCH / ACCUM_ITER images and sums their gradients (backbones.training). The
    # schedule, MAX_ITER, checkpoints and metrics count optimizer steps.
    cfg.SOLVER.ACCUM_ITER = 1
    # Mixed precision (SOLVER.AMP.ENABLED): float16 (CUDA, with a GradScaler) or bfloat16
    # (CUDA or CPU).
    cfg.SOLVER.AMP.DTYPE = "float16"

    # ------------------------------------------------------------ augmentation
    # MViTv2 / DETR-style: with probability PROB, first resize the short side to one of
    # MIN_SIZE and crop a random CROP_SIZE (absolute range), then the usual
    # ResizeShortestEdge + flip.
    cfg.INPUT.RANDOM_RESIZE_CROP = CN()
    cfg.INPUT.RANDOM_RESIZE_CROP.ENABLED = False
    cfg.INPUT.RANDOM_RESIZE_CROP.PROB = 0.5
    cfg.INPUT.RANDOM_RESIZE_CROP.MIN_SIZE = (400, 500, 600)
    cfg.INPUT.RANDOM_RESIZE_CROP.CROP_SIZE = (384, 600)

    # ----------------------------------------------------- synthetic shapes data
    # Datasets "shapes_train" / "shapes_val": generated once, deterministically, into
    # ROOT ("" = .cache/revvision/shapes in the repository checkout, else
    # ~/.cache/revvision/shapes).
    cfg.DATASETS.SHAPES = CN()
    cfg.DATASETS.SHAPES.ROOT = ""
    cfg.DATASETS.SHAPES.NUM_TRAIN = 600
    cfg.DATASETS.SHAPES.NUM_VAL = 100
    cfg.DATASETS.SHAPES.IMAGE_SIZE = 160
    cfg.DATASETS.SHAPES.MAX_SHAPES = 4
    cfg.DATASETS.SHAPES.SEED = 0

    # ------------------------------------------------------------ evaluation
    # Write this many PNGs of predictions on the first test set to OUTPUT_DIR/vis after
    # training / --eval-only.
    cfg.TEST.VIS_IMAGES = 0
    cfg.TEST.VIS_SCORE_THRESH = 0.5
    return cfg


def training_device(cfg) -> str:
    """"cuda" or "cpu": where training runs (MODEL.DEVICE cuda falls back to the CPU)."""
    return "cuda" if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available() else "cpu"


def check_solver(cfg, world_size: int = 1) -> None:
    """Raise ``backbones.errors.UserError`` naming the key if SOLVER.ACCUM_ITER,
    SOLVER.LAYER_DECAY or SOLVER.AMP cannot work with ``world_size`` processes (called
    before any data is read)."""
    training.check_solver(cfg.SOLVER, cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", world_size,
                          training_device(cfg))
