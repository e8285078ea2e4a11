"""A synthetic COCO-format instance-segmentation dataset: coloured shapes on clutter.

Circles, squares and triangles of several sizes, colours and rotations, placed without
overlap on cluttered backgrounds (colour gradients, smooth blotches, random lines and
pixel noise), with polygon instance masks. Image ``i`` of a split depends only on
``(seed, split, i)``, so a dataset is reproducible and a larger one extends a smaller one.
A split is generated once into a cache folder, atomically (a partly written folder is
never used), and then read with Detectron2's ``load_coco_json``:

    <root>/<split>-<N>x<size>-max<k>-seed<s>-v1/{images/000000.png, ..., annotations.json}

``register_shapes("shapes_train", "train")`` registers a split; ``import revdet``
registers ``shapes_train`` / ``shapes_val`` with the defaults of ``add_revdet_config``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

CLASSES = ("circle", "square", "triangle")
VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Saturated object colours (RGB); each instance jitters its colour a little.
_PALETTE = np.array([
    (220, 40, 40), (40, 190, 60), (50, 90, 230), (235, 210, 40),
    (200, 60, 210), (40, 200, 210), (245, 140, 30), (245, 245, 245),
], dtype=np.float64)


@dataclass(frozen=True)
class ShapesSpec:
    split: str = "train"
    num_images: int = 600
    image_size: int = 160  # longest side; the other side is 80-100% of it
    max_shapes: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.split not in _SPLIT_CODES:
            raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {self.split!r}")
        if self.num_images < 1 or self.image_size < 48 or self.max_shapes < 1:
            raise ValueError(f"invalid shapes dataset spec {self}")

    @property
    def dirname(self) -> str:
        return (f"{self.split}-{self.num_images}x{self.image_size}-max{self.max_shapes}"
                f"-seed{self.seed}-v{VERSION}")


def default_root() -> str:
    """``.cache/revvision/shapes`` in the repository checkout, else under ``~/.cache``."""
    repo = Path(__file__).resolve().parents[1]
    if (repo / "setup.py").is_file() and (repo / "revdet").is_dir():
        return str(repo / ".cache" / "revvision" / "shapes")
    return str(Path.home() / ".cache" / "revvision" / "shapes")


def split_paths(spec: ShapesSpec, root: str = "") -> Tuple[str, str]:
    """``(annotations.json, image folder)`` of a split (whether generated yet or not)."""
    base = os.path.join(os.path.abspath(root or default_root()), spec.dirname)
    return os.path.join(base, "annotations.json"), os.path.join(base, "images")


# ------------------------------------------------------------------- drawing
def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    n = {"circle": 48, "square": 4, "triangle": 3}[kind]
    t = angle + np.arange(n) * (2 * math.pi / n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    c0, c1 = rng.uniform(40, 200, size=(2, 3))
    c0 = c0 * 0.4 + c0.mean() * 0.6  # low saturation, so objects stand out by colour
    c1 = c1 * 0.4 + c1.mean() * 0.6
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (xx * math.cos(theta) + yy * math.sin(theta))
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 + t[..., None] * (c1 - c0)
    blotches = rng.normal(0, 25, size=(6, 6, 3)).astype(np.float32)
    img += cv2.resize(blotches, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(4, 11)):  # clutter: lines and arcs in object-like colours
        color = tuple(int(c) for c in _PALETTE[rng.integers(len(_PALETTE))] * rng.uniform(0.5, 0.9))
        thickness = int(rng.integers(1, 3))
        if rng.random() < 0.6:
            p0 = tuple(int(v) for v in rng.integers(0, [w, h]))
            p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
            cv2.line(img, p0, p1, color, thickness, cv2.LINE_AA)
        else:
            center = tuple(int(v) for v in rng.integers(0, [w, h]))
            axes = tuple(int(v) for v in rng.integers(5, max(6, w // 3), size=2))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), start,
                        start + float(rng.uniform(40, 200)), color, thickness, cv2.LINE_AA)
    return img


def _place(rng: np.random.Generator, h: int, w: int, size: int, k: int) -> List[Tuple[float, float, float]]:
    placed: List[Tuple[float, float, float]] = []
    for _ in range(k):
        for _attempt in range(60):
            r = size * math.exp(rng.uniform(math.log(0.07), math.log(0.24)))  # several sizes
            if 2 * r + 4 >= min(h, w):
                continue
            cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
            if all(math.hypot(cx - x, cy - y) > r + q + 3 for x, y, q in placed):
                placed.append((cx, cy, r))
                break
    return placed


def render_image(spec: ShapesSpec, index: int) -> Tuple[np.ndarray, List[Dict]]:
    """RGB image ``(H, W, 3)`` uint8 and its instances ``{category, polygon}`` (deterministic)."""
    import cv2

    rng = np.random.default_rng([spec.seed, _SPLIT_CODES[spec.split], index, VERSION])
    h = spec.image_size
    w = int(spec.image_size * rng.uniform(0.8, 1.0))
    if rng.random() < 0.5:
        h, w = w, h
    img = _background(rng, h, w)
    instances = []
    for cx, cy, r in _place(rng, h, w, spec.image_size, int(rng.integers(1, spec.max_shapes + 1))):
        category = int(rng.integers(len(CLASSES)))
        poly = _polygon(CLASSES[category], cx, cy, r, rng.uniform(0, 2 * math.pi))
        color = np.clip(_PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, 12, 3), 0, 255)
        pts = np.round(poly * 16).astype(np.int32)  # 4 bits of sub-pixel precision
        cv2.fillPoly(img, [pts], tuple(float(c) for c in color), cv2.LINE_AA, shift=4)
        instances.append({"category": category, "polygon": poly})
    noise = rng.normal(0, 5, img.shape)
    img = np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return img, instances


def _coco_annotation(poly: np.ndarray, ann_id: int, image_id: int, category: int,
                     h: int, w: int) -> Dict:
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    x0, y0 = max(float(x.min()), 0.0), max(float(y.min()), 0.0)
    x1, y1 = min(float(x.max()), float(w)), min(float(y.max()), float(h))
    return {"id": ann_id, "image_id": image_id, "category_id": category + 1,
            "segmentation": [[round(float(v), 2) for v in poly.reshape(-1)]],
            "area": round(area, 2), "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
            "iscrowd": 0}


def generate(spec: ShapesSpec, root: str = "") -> Tuple[str, str]:
    """Generate a split if it is not cached yet; return ``(annotations.json, image folder)``."""
    import cv2

    json_file, image_root = split_paths(spec, root)
    if os.path.isfile(json_file):
        return json_file, image_root
    final = os.path.dirname(json_file)
    tmp = f"{final}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "images"))
    images, annotations = [], []
    for i in range(spec.num_images):
        img, instances = render_image(spec, i)
        name = f"{i:06d}.png"
        cv2.imwrite(os.path.join(tmp, "images", name), img[:, :, ::-1])
        h, w = img.shape[:2]
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for inst in instances:
            annotations.append(_coco_annotation(inst["polygon"], len(annotations) + 1, i + 1,
                                                inst["category"], h, w))
    coco = {"info": {"description": "revvision synthetic shapes", "version": VERSION,
                     "spec": asdict(spec)},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                           for i, n in enumerate(CLASSES)]}
    with open(os.path.join(tmp, "annotations.json"), "w") as f:
        json.dump(coco, f)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same split first
        if not os.path.isfile(json_file):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return json_file, image_root


# --------------------------------------------------------------- registration
def register_shapes(name: str, spec: ShapesSpec, root: str = "") -> None:
    """Register (or re-register) a shapes split under ``name`` for Detectron2.

    The split is generated on first use (``DatasetCatalog.get``) or by ``generate``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    json_file, image_root = split_paths(spec, root)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load():
        generate(spec, root)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", thing_classes=list(CLASSES),
                                  shapes_spec=spec, shapes_root=root)


def specs_from_config(cfg) -> Dict[str, ShapesSpec]:
    s = cfg.DATASETS.SHAPES
    common = dict(image_size=s.IMAGE_SIZE, max_shapes=s.MAX_SHAPES, seed=s.SEED)
    return {"shapes_train": ShapesSpec("train", s.NUM_TRAIN, **common),
            "shapes_val": ShapesSpec("val", s.NUM_VAL, **common)}


def register_shapes_from_config(cfg) -> None:
    """(Re-)register ``shapes_train`` / ``shapes_val`` as ``cfg.DATASETS.SHAPES`` says."""
    for name, spec in specs_from_config(cfg).items():
        register_shapes(name, spec, cfg.DATASETS.SHAPES.ROOT)


def generate_used(cfg) -> None:
    """Generate the shapes splits that ``cfg.DATASETS`` uses (call before spawning workers)."""
    used = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    for name, spec in specs_from_config(cfg).items():
        if name in used:
            generate(spec, cfg.DATASETS.SHAPES.ROOT)
