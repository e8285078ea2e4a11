"""Tiny Detectron2 configs for the revdet tests: every code path, a fraction of the cost."""

from __future__ import annotations

from pathlib import Path

import revdet  # noqa: F401  (registers the backbones)
from detectron2.config import get_cfg

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# Rev-MViT layout: 0 rev | 1 transition | 2 rev | 3 transition | 4 rev | 5 transition | 6 rev
TINY_MVIT = [
    "MODEL.ARCH", "rev_mvit_b", "MVIT.EMBED_DIM", 8, "MVIT.DEPTH", 7,
    "MVIT.NUM_HEADS", 1,
    "MVIT.DIM_MUL", [[1, 2.0], [3, 2.0], [5, 2.0]],
    "MVIT.HEAD_MUL", [[1, 2.0], [3, 2.0], [5, 2.0]],
    "MVIT.POOL_Q_STRIDE", [[1, 1, 2, 2], [3, 1, 2, 2], [5, 1, 2, 2]],
    "MVIT.POOL_KV_STRIDE_ADAPTIVE", [1, 4, 4],
    "MODEL.REVDET.INPUT_SIZE", 64,
]
TINY_VIT = [
    "MODEL.ARCH", "rev_vit_s", "MVIT.EMBED_DIM", 16, "MVIT.DEPTH", 2,
    "MVIT.NUM_HEADS", 2, "MODEL.REVDET.INPUT_SIZE", 64,
    "MODEL.REVDET.OUT_FEATURES", ["scale4"], "MVIT.DIM_MUL", [],
    "MVIT.HEAD_MUL", [], "MVIT.POOL_Q_STRIDE", [],
    "MVIT.POOL_KV_STRIDE_ADAPTIVE", [],
]
TINY_HEADS = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.FPN.OUT_CHANNELS", 16,
    "MODEL.ANCHOR_GENERATOR.SIZES", [[8], [16], [32], [64], [128]],
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
    "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
    "TEST.DETECTIONS_PER_IMAGE", 10,
]
# All four registered backbones: (name, tiny architecture keys).
BACKBONES = {
    "build_rev_mvit_fpn_backbone": TINY_MVIT,
    "build_mvit_fpn_backbone": TINY_MVIT,
    "build_rev_vit_simple_fpn_backbone": TINY_VIT,
    "build_vit_simple_fpn_backbone": TINY_VIT,
}


def tiny_cfg(backbone: str = "build_rev_mvit_fpn_backbone", *opts):
    """The demo config shrunk to a tiny model with ``backbone``; ``opts`` are KEY VALUE pairs."""
    cfg = revdet.add_revdet_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / "demo_shapes_revmvit.yaml"))
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", backbone] + BACKBONES[backbone] + TINY_HEADS
                        + list(opts))
    return cfg


# Every anchor and every proposal is used (no random subsampling) and there is no mask head,
# so the loss of a batch is exactly the mean of its images' losses.
DETERMINISTIC_LOSS = ["MODEL.MASK_ON", False, "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 4096,
                      "MODEL.RPN.POST_NMS_TOPK_TRAIN", 20, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512]


def tiny_batch(num_images: int, seed: int = 0, size: int = 64, boxes: int = 3):
    """Detectron2 training inputs: random images with ``boxes`` random boxes of the tiny
    configs' 3 classes each."""
    import torch
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        inst = Instances((size, size))
        xy = torch.rand(boxes, 2, generator=g) * size * 0.6
        wh = size * 0.12 + torch.rand(boxes, 2, generator=g) * size * 0.25
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, 3, (boxes,), generator=g)
        batch.append({"image": torch.rand(3, size, size, generator=g) * 255, "instances": inst,
                      "height": size, "width": size})
    return batch


def tiny_shapes_opts(root, num_train: int = 8, num_val: int = 4, size: int = 64):
    """KEY VALUE pairs for a tiny shapes dataset in ``root``, trained at its native size."""
    return ["DATASETS.SHAPES.ROOT", str(root), "DATASETS.SHAPES.NUM_TRAIN", num_train,
            "DATASETS.SHAPES.NUM_VAL", num_val, "DATASETS.SHAPES.IMAGE_SIZE", size,
            "DATASETS.SHAPES.MAX_SHAPES", 2,
            "INPUT.MIN_SIZE_TRAIN", (size,), "INPUT.MAX_SIZE_TRAIN", size,
            "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size]


def make_coco(root, split: str = "train", num_images: int = 4, size: int = 64, seed: int = 0,
              mode: str = "RGB"):
    """A tiny COCO-layout split under ``root`` (``root`` plays ``$DETECTRON2_DATASETS``):
    square ``size`` images, one shape each (labelled with one of the first three COCO
    categories), polygon masks; the json lists all 80 COCO categories, as the real one does.
    Returns ``(annotations.json, image folder)``."""
    import json
    import os

    import numpy as np
    from PIL import Image

    from revdet import shapes

    image_dir = os.path.join(root, "coco", f"{split}2017")
    ann_dir = os.path.join(root, "coco", "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        img = np.full((size, size, 3), rng.integers(40, 120), np.uint8)
        r = rng.uniform(0.15, 0.3) * size
        cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
        category = int(rng.integers(3))
        poly = shapes._polygon(shapes.CLASSES[category], cx, cy, r, rng.uniform(0, 6.3))
        import cv2

        cv2.fillPoly(img, [np.round(poly * 16).astype(np.int32)], (230, 60, 40), cv2.LINE_AA,
                     shift=4)
        name = f"{i:04d}.png"
        Image.fromarray(img).convert(mode).save(os.path.join(image_dir, name))
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        annotations.append(shapes._coco_annotation(poly, i + 1, i + 1, category, size, size))
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES
                           if c["isthing"]]}
    json_file = os.path.join(ann_dir, f"instances_{split}2017.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    return json_file, image_dir
