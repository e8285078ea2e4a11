"""Data loading for detection: dataset checks with clear errors, the mapper, augmentations.

Datasets are found the Detectron2 way: the built-in COCO splits live under
``$DETECTRON2_DATASETS`` (default ``./datasets``). ``check_datasets`` fails early with a
message saying where it looked and which layout it expects; ``guard_dataset`` makes a
malformed annotation file or a missing image an error naming the file, before any
training starts; ``RevDetDatasetMapper`` names the image when decoding fails.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Iterable, List

import numpy as np

import detectron2.data.transforms as T
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils

from backbones.errors import UserError

logger = logging.getLogger(__name__)

COCO_LAYOUT = """\
  $DETECTRON2_DATASETS/coco/annotations/instances_train2017.json
  $DETECTRON2_DATASETS/coco/annotations/instances_val2017.json
  $DETECTRON2_DATASETS/coco/train2017/*.jpg
  $DETECTRON2_DATASETS/coco/val2017/*.jpg"""


class DatasetError(UserError, RuntimeError):
    """A dataset that cannot be used as it is (the message names the file)."""


def _datasets_root() -> str:
    value = os.environ.get("DETECTRON2_DATASETS")
    where = os.path.abspath(value or "datasets")
    how = f"DETECTRON2_DATASETS={value}" if value else \
        f"DETECTRON2_DATASETS is not set, so ./datasets in {os.getcwd()}"
    return f"{where} ({how})"


def check_datasets(names: Iterable[str]) -> None:
    """Fail early, and clearly, if a dataset is unregistered or its files are missing."""
    from . import shapes

    for name in names:
        if name not in DatasetCatalog.list():
            raise DatasetError(
                f"dataset {name!r} is not registered. Registered: "
                f"{', '.join(sorted(DatasetCatalog.list()))}")
        meta = MetadataCatalog.get(name)
        if meta.get("shapes_spec") is not None:
            shapes.generate(meta.shapes_spec, meta.shapes_root)
            continue
        json_file, image_root = meta.get("json_file"), meta.get("image_root")
        problems = []
        if json_file and not os.path.isfile(json_file):
            problems.append(f"annotations {os.path.abspath(json_file)} (missing)")
        if image_root and not os.path.isdir(image_root):
            problems.append(f"images {os.path.abspath(image_root)}/ (missing)")
        if problems:
            layout = COCO_LAYOUT if name.startswith("coco_") else \
                "  the files registered for it (see detectron2/data/datasets/builtin.py)"
            raise DatasetError(
                f"dataset {name!r} not found. Looked for " + " and ".join(problems)
                + f".\nDatasets root: {_datasets_root()}.\nExpected layout:\n{layout}\n"
                "Point DETECTRON2_DATASETS at the folder holding coco/, or use the built-in "
                "synthetic data: DATASETS.TRAIN \"('shapes_train',)\" "
                "DATASETS.TEST \"('shapes_val',)\".")


def guard_dataset(name: str) -> None:
    """Wrap the registered loader of ``name`` so that a malformed annotation file or a
    missing image raises one ``DatasetError`` naming the file (idempotent)."""
    func = DatasetCatalog[name]  # the catalog is a dict of loader functions
    if getattr(func, "_revdet_guarded", False):
        return

    def guarded():
        source = MetadataCatalog.get(name).get("json_file") or f"the loader of {name!r}"
        try:
            records = func()
        except FileNotFoundError as e:
            raise DatasetError(f"dataset {name!r}: file not found: {e.filename or e}") from None
        except json.JSONDecodeError as e:
            raise DatasetError(f"malformed annotation file {source}: not valid JSON "
                               f"({e.msg} at line {e.lineno} column {e.colno})") from None
        except (KeyError, TypeError, ValueError, AssertionError, IndexError) as e:
            raise DatasetError(f"malformed annotation file {source}: "
                               f"{type(e).__name__}: {e}") from None
        if not records:
            raise DatasetError(f"malformed annotation file {source}: it lists no images (a COCO "
                               "instances file has 'images', 'annotations' and 'categories')")
        for r in records:
            for i, ann in enumerate(r.get("annotations", [])):
                bbox = ann.get("bbox")
                if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or "category_id" not in ann:
                    raise DatasetError(f"malformed annotation file {source}: annotation {i} of "
                                       f"image {r['file_name']} needs a 4-number 'bbox' and a "
                                       f"'category_id', got {sorted(ann)}")
        missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(records)} images listed in {source} are missing, "
                f"e.g. {', '.join(missing[:3])}")
        return records

    guarded._revdet_guarded = True
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, guarded)


def build_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """Detectron2's resize (+ flip), preceded in training by the optional
    MViTv2-style random resize-and-crop (``INPUT.RANDOM_RESIZE_CROP``)."""
    augs = utils.build_augmentation(cfg, is_train)
    rc = cfg.INPUT.RANDOM_RESIZE_CROP
    if is_train and rc.ENABLED:
        resize_crop = T.AugmentationList([
            T.ResizeShortestEdge(list(rc.MIN_SIZE), sample_style="choice"),
            T.RandomCrop("absolute_range", tuple(rc.CROP_SIZE)),
        ])
        augs.insert(0, T.RandomApply(resize_crop, prob=rc.PROB))
    return augs


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8 array -> ``(H, W, 3)``."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or "
                         f"(H, W, 4), got {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


class RevDetDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` (any PIL-readable image: grayscale and RGBA are
    converted to ``INPUT.FORMAT``) with revdet's augmentations and errors naming the file."""

    def __init__(self, cfg, is_train: bool = True):
        crop = is_train and cfg.INPUT.RANDOM_RESIZE_CROP.ENABLED
        super().__init__(cfg, is_train, augmentations=build_augmentation(cfg, is_train),
                         recompute_boxes=bool(cfg.INPUT.CROP.ENABLED or crop) and cfg.MODEL.MASK_ON)

    def __call__(self, dataset_dict):
        try:
            return super().__call__(copy.deepcopy(dataset_dict))
        except Exception as e:  # name the file whatever went wrong with it
            raise DatasetError(f"cannot load image {dataset_dict.get('file_name')}: "
                               f"{type(e).__name__}: {e}") from e
