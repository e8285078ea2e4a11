"""A synthetic Kinetics-format dataset: shapes moving up or down, in short H.264 mp4 clips.

Six classes, the shape and its direction of motion (sorted names, so the CSV labels and
the class-folder order agree)::

    circle_down circle_up square_down square_up triangle_down triangle_up

Each clip has a random background colour with pixel noise and one filled shape of random
colour, size, horizontal position and speed, moving steadily up or down for the whole
clip, so every temporal window shows the direction. Recognising a class needs both the
shape (spatial) and the motion (temporal); a horizontal flip keeps the label.

Layout (both Kinetics layouts at once)::

    <root>/<name>/train.csv, val.csv        # "<relative path> <label>" per line
    <root>/<name>/{train,val}/<class>/<id>.mp4
    <root>/<name>/classes.txt, spec.json

``ensure_dataset`` generates it once: the frames deterministically from the spec (numpy's
PCG64 with the seed), into a temporary folder that is renamed into place, under a file lock
so that concurrent processes do not generate it twice. The encoded files are not quite
deterministic: in 5 of 12 processes encoding the same clips, libx264 (through PyAV) wrote at
least one file differently, with slightly different decoded pixels; runs on a cached dataset
see the same files. ``<name>`` encodes the spec, so changing a
setting makes a new dataset instead of reusing a stale one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("down", "up")
CLASSES = sorted(f"{s}_{d}" for s in SHAPES for d in DIRECTIONS)
_VERSION = 2


@dataclass(frozen=True)
class ShapesSpec:
    num_train: int = 360
    num_val: int = 120
    frames: int = 32
    width: int = 64
    height: int = 48
    fps: int = 30
    seed: int = 0

    @property
    def name(self) -> str:
        return (f"v{_VERSION}_train{self.num_train}_val{self.num_val}_{self.width}x{self.height}"
                f"_{self.frames}f{self.fps}_seed{self.seed}")


def spec_from_cfg(cfg) -> ShapesSpec:
    s = cfg.DATA.SYNTHETIC
    return ShapesSpec(s.NUM_TRAIN, s.NUM_VAL, s.FRAMES, s.WIDTH, s.HEIGHT, s.FPS, s.SEED)


def default_root() -> Path:
    """``$REVVISION_CACHE/video_shapes``, else ``.cache/revvision/video_shapes`` in the checkout."""
    env = os.environ.get("REVVISION_CACHE")
    if env:
        return Path(env) / "video_shapes"
    return Path(__file__).resolve().parent.parent / ".cache" / "revvision" / "video_shapes"


# ---------------------------------------------------------------------------- drawing
def _shape_mask(shape: str, h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    if shape == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    if shape == "square":
        return (np.abs(y - cy) <= r * 0.85) & (np.abs(x - cx) <= r * 0.85)
    if shape == "triangle":  # apex up; a horizontal flip keeps it a triangle
        top, bottom = cy - r, cy + r
        half = (y - top) / (2 * r) * r
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half)
    raise ValueError(shape)


def render_clip(label: int, spec: ShapesSpec, rng: np.random.Generator) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8 frames of one clip of class ``CLASSES[label]``."""
    shape, direction = CLASSES[label].split("_")
    t, h, w = spec.frames, spec.height, spec.width
    r = rng.uniform(0.16, 0.22) * h  # radius
    speed = rng.uniform(0.25, 0.45) * h / t  # pixels per frame
    travel = speed * (t - 1)
    lo, hi = r + 1, h - r - 1 - travel
    y0 = rng.uniform(lo, max(lo, hi))
    cx = rng.uniform(w / 2 - 0.15 * w, w / 2 + 0.15 * w)
    background = rng.uniform(0, 90, size=3)
    colour = rng.uniform(150, 255, size=3)
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        cy = y0 + speed * i if direction == "down" else y0 + travel - speed * i
        img = background + rng.normal(0, 8, size=(h, w, 3))
        img[_shape_mask(shape, h, w, cy, cx, r)] = colour
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Union[str, Path], frames: np.ndarray, fps: int) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as H.264 (yuv420p) with PyAV."""
    import av

    t, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        stream.thread_count = 1  # tiny videos; the output is not byte-exact either way (module doc)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# -------------------------------------------------------------------------- generation
def _generate(out: Path, spec: ShapesSpec) -> None:
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        lines: List[str] = []
        for i in range(count):
            label = i % len(CLASSES)  # balanced classes
            rel = Path(split) / CLASSES[label] / f"{split}_{i:05d}.mp4"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            write_mp4(out / rel, render_clip(label, spec, rng), spec.fps)
            lines.append(f"{rel.as_posix()} {label}")
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1) + "\n")


def ensure_dataset(spec: ShapesSpec = ShapesSpec(),
                   root: Optional[Union[str, Path]] = None) -> Path:
    """The dataset folder for ``spec`` under ``root``, generated first if needed."""
    root = Path(root) if root else default_root()
    final = root / spec.name
    if (final / "spec.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (final / "spec.json").is_file():  # made by another process meanwhile
                return final
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{spec.name}."))
            try:
                _generate(tmp, spec)
                if final.exists():  # an incomplete earlier attempt
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final
