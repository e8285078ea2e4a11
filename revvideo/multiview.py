"""Test-time views and their aggregation: the official Kinetics protocol (PySlowFast).

Per video, ``num_clips`` temporal clips x ``num_crops`` spatial crops; every view goes
through the model, the **softmax scores of all views of a video are summed**, and top-1 /
top-5 come from the summed scores.

Temporal sampling, exactly as the official decoder does it on a decoded video of ``F``
frames at ``fps``::

    clip_size = max(1, sampling_rate * num_frames / target_fps * fps)      # frames
    start = max(F - clip_size, 0) * clip_idx / num_clips                     # clip_idx = 0..num_clips-1
    end = start + clip_size - 1
    frames = clamp(torch.linspace(start, end, num_frames), 0, F - 1).long()  # truncation

pytorchvideo's ``ConstantClipsPerVideoSampler`` + ``UniformTemporalSubsample`` differ from
this: they choose the clip in seconds (PTS rounded up to a frame), subsample the *decoded*
clip with ``linspace(0, n - 1)``, so clip starts move by up to a frame and the frame stride
is ``(n - 1) / 15`` instead of ``clip_size / 15``; and for a video shorter than a clip they
spread the frames over the whole video where the official sampler keeps the stride and
repeats the last frame. revvideo therefore decodes each test video once and takes every
view from the decoded frames with ``official_clip_indices``; only those frames are converted
to RGB (``TestViews.select`` is the decoder's frame selector, ``revvideo.decoding``).
(The official config decodes with the torchvision backend, which selects each clip's PTS
range first and samples inside it; with constant frame rates that is the same formula.)

Spatial sampling: with one crop, the short side is scaled to ``TRAIN_JITTER_SCALES[0]``
(256) and the center ``TEST_CROP_SIZE`` (224) crop is taken; with three crops the short
side is scaled to ``TEST_CROP_SIZE`` and the left/center/right (or top/center/bottom)
crops are taken. Scaling is bilinear (``align_corners=False``), crop offsets are
``ceil((L - size) / 2)`` (pytorchvideo's ``uniform_crop``, identical to the official one).
Decoded frames are scaled and cropped in uint8 and made float only to be normalised, which
moves pixels by at most one grey level from scaling in float (see ``revvideo.transforms``).

The test loader has the decoder scale each kept frame once and cut it to the part the
views use (``prepare_frame``: the center crop, or the whole scaled frame for three crops),
skipping the frames no view keeps that H.264 lets it skip (``revvideo.decoding``), so the
views are slices of the decoded frames (with one crop, views of them without a copy, in
the decoder's ``(T, H, W, C)`` memory layout); it delivers them in uint8, uncollated, and
``revvideo.model.MultiViewClassifier`` normalises them (``TestViews.normalize``) into the
model's batch: the same floats, 4x fewer bytes to move, no float views written in the
loader, and the normalisation's float copy is the one that makes them channels-first.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch

from . import compat

compat.apply()

from detectron2.evaluation import DatasetEvaluator  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from pytorchvideo.transforms.functional import uniform_crop  # noqa: E402

from .transforms import NormalizeClips, numpy_allocated, scale_short_side, short_side_scaled  # noqa: E402

logger = logging.getLogger(__name__)

# Published results of released checkpoints (top-1, top-5; 5 views x 1 crop).
PUBLISHED = {("rev_mvit_b_16x4", 400): (78.4, 93.4)}


# --------------------------------------------------------------------------- sampling
def official_clip_indices(num_video_frames: int, fps: float, num_frames: int,
                          sampling_rate: int, target_fps: float, clip_idx: int,
                          num_clips: int) -> torch.Tensor:
    """Frame indices of temporal clip ``clip_idx`` of ``num_clips`` (official test sampling)."""
    if num_video_frames < 1:
        raise ValueError("a video needs at least one frame")
    if not 0 <= clip_idx < num_clips:
        raise ValueError(f"clip_idx={clip_idx} is not in [0, {num_clips})")
    clip_size = max(1.0, sampling_rate * num_frames / target_fps * fps)
    start = max(num_video_frames - clip_size, 0) * clip_idx / num_clips
    end = start + clip_size - 1
    index = torch.linspace(start, end, num_frames)
    return torch.clamp(index, 0, num_video_frames - 1).long()


class TestViews:
    """Transform of a whole decoded video into its test views (see the module docstring).

    Input: a sample dict with ``video`` ``(C, F, H, W)`` (uint8, or float in [0, 255]) and
    ``fps``. Output: ``video`` becomes ``(num_clips * num_crops, C, num_frames, crop, crop)``
    normalised, ordered clip-major (view ``i`` = clip ``i // num_crops``, crop
    ``i % num_crops``). The test loader lets the decoder pick the frames (``select``), scale
    and crop them (``prepare_frame``), calls ``views_of_prepared`` on them, and leaves
    ``normalize`` to the model's wrapper.
    """

    def __init__(self, num_frames: int, sampling_rate: int, target_fps: float,
                 num_clips: int, num_crops: int, short_side: int, crop_size: int,
                 mean: Sequence[float], std: Sequence[float]):
        if num_crops not in (1, 3):
            raise ValueError(f"TEST.NUM_SPATIAL_CROPS must be 1 or 3, got {num_crops}")
        self.num_frames, self.sampling_rate, self.target_fps = num_frames, sampling_rate, target_fps
        self.num_clips, self.num_crops = num_clips, num_crops
        self.crop_size = crop_size
        self.short_side = short_side if num_crops == 1 else crop_size
        self.normalize = NormalizeClips(mean, std)

    @classmethod
    def from_config(cls, cfg, num_clips: int = 0, num_crops: int = 0) -> "TestViews":
        """The views ``cfg``'s evaluation takes (``TEST.NUM_ENSEMBLE_VIEWS`` x
        ``TEST.NUM_SPATIAL_CROPS`` unless given)."""
        d = cfg.DATA
        return cls(d.NUM_FRAMES, d.SAMPLING_RATE, d.TARGET_FPS,
                   num_clips or cfg.TEST.NUM_ENSEMBLE_VIEWS, num_crops or cfg.TEST.NUM_SPATIAL_CROPS,
                   d.TRAIN_JITTER_SCALES[0], d.TEST_CROP_SIZE, d.MEAN, d.STD)

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def frame_indices(self, num_video_frames: int, fps: float) -> List[torch.Tensor]:
        return [official_clip_indices(num_video_frames, fps, self.num_frames, self.sampling_rate,
                                      self.target_fps, i, self.num_clips)
                for i in range(self.num_clips)]

    def select(self, num_video_frames: int, fps: float = 0.0) -> torch.Tensor:
        """The frames of all clips, clip after clip (a frame selector for the decoder)."""
        return torch.cat(self.frame_indices(num_video_frames, float(fps or self.target_fps)))

    def __call__(self, sample: Dict) -> Dict:
        """The normalised views of a whole decoded video."""
        index = self.select(sample["video"].shape[1], sample.get("fps") or 0.0)
        sample["video"] = self.prepare(sample["video"].index_select(1, index))
        sample = self.views_of_prepared(sample)
        sample["video"] = self.normalize(sample["video"])
        return sample

    def prepare(self, clips: torch.Tensor) -> torch.Tensor:
        """``(C, K, H, W)`` frames scaled and cut to the part the views cover: the center
        crop, or the whole scaled frame for three crops."""
        clips = scale_short_side(clips, self.short_side)
        return uniform_crop(clips, self.crop_size, 1) if self.num_crops == 1 else clips

    def prepare_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """``prepare`` of one decoded ``(H, W, 3)`` frame (a frame transform for the decoder:
        the 80 frames of 5 views are scaled and cropped one by one, never held whole)."""
        h, w, _ = frame.shape
        if (self.num_crops == 1 and short_side_scaled(h, w, self.short_side) == (h, w)
                and min(h, w) >= self.crop_size):
            # nothing to scale (e.g. Kinetics at 340x256): the center crop, sliced at once
            y, x = math.ceil((h - self.crop_size) / 2), math.ceil((w - self.crop_size) / 2)
            return frame[y:y + self.crop_size, x:x + self.crop_size]
        return self.prepare(frame.permute(2, 0, 1)[:, None])[:, 0].permute(1, 2, 0)

    def views_of_prepared(self, sample: Dict) -> Dict:
        """The views of ``select``'s frames after ``prepare`` ``(C, clips*T, H, W)``, in their
        dtype (uint8 or float pixel values, not normalised), in the frames' memory layout.

        With one crop the views are the prepared frames themselves, seen as
        ``(clips, C, T, crop, crop)`` without a copy; three crops are copied into one
        numpy-allocated buffer laid out ``(views, T, crop, crop, C)`` like the decoder's frames
        (a copy in the same layout is the cheap one). The copy to the model's contiguous layout
        is left to collation or normalisation, which copy anyway.
        """
        clips = sample["video"]
        if self.num_crops == 1:  # the prepared frames are the center crop
            views = uniform_crop(clips, self.crop_size, 1).unflatten(1, (-1, self.num_frames)).transpose(0, 1)
        else:
            crops = [uniform_crop(clip, self.crop_size, i)
                     for clip in clips.split(self.num_frames, dim=1) for i in (0, 1, 2)]
            c, t, h, w = crops[0].shape
            views = numpy_allocated((len(crops), t, h, w, c), clips.dtype).permute(0, 4, 1, 2, 3)
            for view, crop in zip(views, crops):
                view.copy_(crop)
        sample["video"] = views
        return sample


# ------------------------------------------------------------------------ aggregation
class ViewScores:
    """Sums per-view softmax scores per video and computes top-k accuracy.

        scores = ViewScores(num_classes=400)
        scores.add(video_ids, probs, labels)      # probs: (N, K) or (N, V, K)
        scores.topk((1, 5))                       # {1: 78.4, 5: 93.4} in percent
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.scores: Dict[int, torch.Tensor] = {}
        self.views: Dict[int, int] = {}
        self.labels: Dict[int, int] = {}

    def add(self, video_ids: Iterable[int], probs: torch.Tensor, labels: Iterable[int]) -> None:
        probs = probs.detach().to("cpu", torch.float64)
        if probs.shape[-1] != self.num_classes:
            raise ValueError(f"scores have {probs.shape[-1]} classes, expected {self.num_classes}")
        if probs.dim() == 2:
            probs = probs[:, None]
        for vid, p, label in zip(video_ids, probs, labels):
            vid, label = int(vid), int(label)
            if vid in self.labels and self.labels[vid] != label:
                raise ValueError(f"video {vid} has two labels ({self.labels[vid]} and {label})")
            self.scores[vid] = self.scores.get(vid, 0) + p.sum(0)
            self.views[vid] = self.views.get(vid, 0) + p.shape[0]
            self.labels[vid] = label

    def merge(self, other: "ViewScores") -> "ViewScores":
        for vid, s in other.scores.items():
            if vid in self.labels and self.labels[vid] != other.labels[vid]:
                raise ValueError(f"video {vid} has two labels")
            self.scores[vid] = self.scores.get(vid, 0) + s
            self.views[vid] = self.views.get(vid, 0) + other.views[vid]
            self.labels[vid] = other.labels[vid]
        return self

    def __len__(self) -> int:
        return len(self.scores)

    def topk(self, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
        """Top-k accuracy in percent over the videos seen (k is capped at the class count)."""
        if not self.scores:
            return {k: float("nan") for k in ks}
        ids = sorted(self.scores)
        scores = torch.stack([self.scores[i] for i in ids])
        labels = torch.tensor([self.labels[i] for i in ids])
        out = {}
        for k in ks:
            top = scores.topk(min(k, self.num_classes), dim=1).indices
            out[k] = 100.0 * (top == labels[:, None]).any(1).double().mean().item()
        return out


# -------------------------------------------------------------------------- evaluator
class MultiViewEvaluator(DatasetEvaluator):
    """Detectron2 ``DatasetEvaluator`` for ``inference_on_dataset``: view scores per video.

    ``process(inputs, outputs)`` takes a test batch (the test loader's list of samples, or
    a collated dict; ``video_index``, ``label``) and the model's softmax scores
    ``(B, V, K)``; ``evaluate()`` merges all processes and returns
    ``{"top1", "top5", "videos", "views_per_video", "skipped"}``. Videos the dataset skipped
    (unreadable, corrupt, too short) are those of ``expected_ids`` that never arrived; they
    are counted and named, and left out of the accuracy (as the official TestMeter would
    fail on them instead).
    """

    def __init__(self, num_classes: int, expected_ids: Iterable[int],
                 video_names: Optional[Sequence[str]] = None, expected_views: int = 0):
        self.num_classes = num_classes
        self.expected_ids = [int(i) for i in expected_ids]
        self.video_names = video_names
        self.expected_views = expected_views
        self.reset()

    def reset(self) -> None:
        self.scores = ViewScores(self.num_classes)

    def process(self, inputs: Union[Dict, List[Dict]], outputs: torch.Tensor) -> None:
        if isinstance(inputs, dict):
            ids, labels = inputs["video_index"].tolist(), inputs["label"].tolist()
        else:
            ids, labels = [s["video_index"] for s in inputs], [s["label"] for s in inputs]
        self.scores.add(ids, outputs, labels)

    def evaluate(self) -> "OrderedDict[str, float]":
        parts = comm.gather((self.scores, self.expected_ids), dst=0)
        if not comm.is_main_process():
            return OrderedDict()
        scores = ViewScores(self.num_classes)
        expected = set()
        for part, ids in parts:
            scores.merge(part)
            expected.update(ids)
        skipped = sorted(expected - set(scores.scores))
        self.skipped_ids = skipped
        if skipped:
            names = [self._name(i) for i in skipped[:20]]
            more = f" ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
            logger.warning(f"{len(skipped)} of {len(expected)} test videos were skipped "
                           f"(unreadable, corrupt or too short): {', '.join(names)}{more}")
        views = sorted(set(scores.views.values()))
        if self.expected_views and views and views != [self.expected_views]:
            logger.warning(f"views per video: {views}, expected {self.expected_views}")
        acc = scores.topk((1, 5))
        return OrderedDict(top1=acc[1], top5=acc[5], videos=len(scores),
                           views_per_video=(views[0] if len(views) == 1 else float("nan")),
                           skipped=len(skipped))

    def _name(self, vid: int) -> str:
        if self.video_names is not None and 0 <= vid < len(self.video_names):
            return str(self.video_names[vid])
        return f"#{vid}"


def format_results(results: Dict[str, float], cfg) -> str:
    """The evaluation table (markdown-style), with the published numbers when known."""
    from tabulate import tabulate

    views = f"{cfg.TEST.NUM_ENSEMBLE_VIEWS} x {cfg.TEST.NUM_SPATIAL_CROPS}"
    weights = cfg.MODEL.WEIGHTS or "(trained in this run)"
    rows = [[weights, int(results["videos"]), views, int(results["skipped"]),
             f"{results['top1']:.2f}", f"{results['top5']:.2f}"]]
    published = PUBLISHED.get((cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES))
    if published and (cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS) == (5, 1):
        rows.append(["published (REV_MVIT_B_16x4.pyth)", "", views, "", f"{published[0]:.1f}",
                     f"{published[1]:.1f}"])
    return tabulate(rows, headers=["weights", "videos", "clips x crops", "skipped", "top-1",
                                   "top-5"], tablefmt="pipe")
