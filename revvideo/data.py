"""Kinetics-format video datasets on pytorchvideo, with bad videos skipped and counted.

Layouts (``DATA.PATH_TO_DATA_DIR``; the split is ``DATA.TRAIN_SPLIT`` / ``DATA.TEST_SPLIT``):

* ``<dir>/<split>.csv`` with one ``<path> <label>`` per line (PySlowFast's and pytorchvideo's
  Kinetics format; a comma also separates). Relative paths are taken relative to
  ``DATA.PATH_PREFIX``, or to the CSV's folder when that is empty.
* ``<dir>/<split>/<class name>/<video>.mp4|avi`` (pytorchvideo's folder layout); classes are
  numbered in sorted order.

Lists are checked up front: a malformed line, a label outside ``[0, NUM_CLASSES)`` or
listed files that do not exist raise one ``DatasetError`` that says how many and which.

Sampling is pytorchvideo's (``LabeledVideoDataset``, its clip samplers, PyAV, no audio);
decoding is ``revvideo.decoding.SelectiveVideo``, which converts to RGB only the frames a
clip keeps (its frame selector) and delivers them as uint8. A video that cannot
be opened or decoded, has no frames in the requested range, or decodes to fewer than
``DATA.MIN_FRAMES`` frames is skipped with a warning naming it and the reason; training
logs an epoch summary with the count (``EpochLoop``), evaluation reports it
(``MultiViewEvaluator``). Unlike pytorchvideo's own loop, nothing gives up after ten bad
videos in a row, and no reason is hidden at debug level.
"""

from __future__ import annotations

import logging
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from backbones.errors import UserError

from . import compat

compat.apply()

from detectron2.data.build import trivial_batch_collator  # noqa: E402
from detectron2.data.samplers import InferenceSampler  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from iopath.common.file_io import g_pathmgr  # noqa: E402
from pytorchvideo.data import LabeledVideoDataset  # noqa: E402
from pytorchvideo.data.clip_sampling import ClipInfo, ClipSampler, RandomClipSampler  # noqa: E402
from pytorchvideo.data.labeled_video_paths import LabeledVideoPaths  # noqa: E402
from pytorchvideo.data.video import VideoPathHandler  # noqa: E402

from .decoding import FrameSelector, FrameTransform, SelectiveVideo, UniformFrames  # noqa: E402
from .transforms import collate_clips  # noqa: E402

logger = logging.getLogger(__name__)

_LISTED = 20  # files named in an error message


class DatasetError(UserError, ValueError):
    """A video list that cannot be used (missing files, bad labels, malformed lines)."""


class VideoList(NamedTuple):
    videos: List[Tuple[str, int]]  # (path, label)
    source: str  # the CSV file or folder it was read from
    class_names: Optional[List[str]]  # folder layout only


# ------------------------------------------------------------------------- video lists
def _shorten(items: Sequence[str]) -> str:
    shown = "\n  ".join(items[:_LISTED])
    more = f"\n  ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return "\n  " + shown + more


def _parse_csv(path: str, prefix: str) -> List[Tuple[str, int, int]]:
    """``(video path, label, line number)`` per non-empty line of a Kinetics CSV."""
    base = prefix or os.path.dirname(os.path.abspath(path))
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1) if len(line.split()) > 1 else line.rsplit(",", 1)
            if len(parts) != 2:
                bad.append(f"line {number}: {line!r} (no label)")
                continue
            video, label = parts[0].strip().rstrip(","), parts[1].strip()
            try:
                value = int(label)
            except ValueError:
                bad.append(f"line {number}: label {label!r} is not an integer")
                continue
            rows.append((os.path.join(base, video), value, number))
    if bad:
        raise DatasetError(f"{path}: {len(bad)} malformed line(s); expected '<video path> "
                           f"<integer label>' per line (PySlowFast/pytorchvideo Kinetics "
                           f"format):" + _shorten(bad))
    if not rows:
        raise DatasetError(f"{path} lists no videos")
    return rows


def read_video_list(path: str, num_classes: int, prefix: str = "",
                    check_files: bool = True) -> VideoList:
    """Read and check a Kinetics CSV file or class-folder tree (see the module docstring)."""
    if os.path.isdir(path):
        try:
            paths = LabeledVideoPaths.from_directory(path)
        except (AssertionError, FileNotFoundError) as e:
            raise DatasetError(f"{path}: no videos found in <class>/<video>.mp4|avi "
                               f"sub-folders ({e})") from None
        class_names = sorted(p.name for p in Path(path).iterdir() if p.is_dir())
        rows = []
        for i in range(len(paths)):
            video, info = paths[i]
            rows.append((video, info["label"], i + 1))
        where = "video #{}"
    elif os.path.isfile(path):
        rows, class_names = _parse_csv(path, prefix), None
        where = "line {}"
    else:
        raise DatasetError(f"video list not found: {path}")

    out_of_range = [f"{where.format(n)}: label {label} ({video})" for video, label, n in rows
                    if not 0 <= label < num_classes]
    if out_of_range:
        hint = (f" (the folder has {len(class_names)} classes)" if class_names else "")
        raise DatasetError(f"{path}: {len(out_of_range)} label(s) outside [0, {num_classes}) "
                           f"= MODEL.NUM_CLASSES{hint}:" + _shorten(out_of_range))
    if check_files:
        missing = [video for video, _, _ in rows if not os.path.exists(video)]
        if missing:
            raise DatasetError(f"{path}: {len(missing)} of {len(rows)} listed videos do not "
                               f"exist:" + _shorten(missing))
    return VideoList([(video, label) for video, label, _ in rows], path, class_names)


def find_split(data_dir: str, split: str) -> str:
    """``<data_dir>/<split>.csv`` if it exists, else the folder ``<data_dir>/<split>/``."""
    if not data_dir:
        raise DatasetError("DATA.PATH_TO_DATA_DIR is empty: set it to the folder holding "
                           f"{split}.csv (or {split}/<class>/<video>.mp4)")
    csv = os.path.join(data_dir, f"{split}.csv")
    if os.path.isfile(csv):
        return csv
    folder = os.path.join(data_dir, split)
    if os.path.isdir(folder):
        return folder
    raise DatasetError(f"neither {csv} nor the folder {folder}/ exists")


# -------------------------------------------------------------------- guarded decoding
class _GuardedVideo:
    """A pytorchvideo ``Video`` whose ``get_clip`` reports failures instead of raising."""

    def __init__(self, video, path: str, min_frames: int, on_skip: Callable[[str, str], None]):
        self._video, self._path, self._min_frames, self._on_skip = video, path, min_frames, on_skip

    @property
    def name(self):
        return self._video.name

    @property
    def duration(self):
        return self._video.duration

    def get_clip(self, start_sec, end_sec) -> Dict[str, Any]:
        try:
            clip = self._video.get_clip(start_sec, end_sec)
        except Exception as e:  # noqa: BLE001 - any decoder failure skips the video
            self._on_skip(self._path, f"decoding failed: {type(e).__name__}: {e}")
            return {"video": None, "audio": None}
        frames = clip.get("video")
        if frames is None:
            self._on_skip(self._path, f"no decodable frames between {float(start_sec):.2f}s and "
                                      f"{float(end_sec):.2f}s (duration {float(self.duration):.2f}s)")
            return {"video": None, "audio": None}
        decoded = clip.get("decoded_frames", frames.shape[1])  # the window, before selection
        if decoded < self._min_frames:
            self._on_skip(self._path, f"too short: {decoded} frame(s), DATA.MIN_FRAMES "
                                      f"is {self._min_frames}")
            return {"video": None, "audio": None}
        return clip

    def close(self) -> None:
        self._video.close()


def _frame_rate(video) -> float:
    """Frames per second of a pytorchvideo video (0.0 if it does not say)."""
    container = getattr(video, "_container", None)  # EncodedVideoPyAV
    try:
        rate = container.streams.video[0].average_rate
        if rate:
            return float(rate)
    except (AttributeError, IndexError, TypeError):
        pass
    return float(getattr(video, "_fps", 0.0) or 0.0)  # FrameVideo


class _GuardedPaths(VideoPathHandler):
    """Opens files as ``SelectiveVideo`` (frame folders as pytorchvideo does), records their
    frame rate, and reports failures."""

    def __init__(self, dataset: "VideoDataset"):
        super().__init__()
        self._dataset = dataset

    def video_from_path(self, filepath, decode_audio=False, decoder="pyav", fps=30):
        ds = self._dataset
        try:
            if decoder == "pyav" and not decode_audio and g_pathmgr.isfile(filepath):
                video = SelectiveVideo.from_path(filepath, ds.frame_selector, ds.decoding_threads,
                                                 ds.frame_transform)
            else:  # frame folders, and pytorchvideo's error for a path that does not exist
                video = super().video_from_path(filepath, decode_audio=decode_audio,
                                                decoder=decoder, fps=fps)
        except Exception as e:  # noqa: BLE001 - LabeledVideoDataset moves on to the next video
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if os.path.isfile(filepath) and os.path.getsize(filepath) == 0:
                reason = "zero-length file"
            ds.report_skip(filepath, f"cannot open: {reason}")
            raise
        info = ds.info_by_path.get(filepath)
        if info is not None:
            info["fps"] = _frame_rate(video)
        return _GuardedVideo(video, filepath, ds.min_frames, ds.report_skip)


class _SafeTransform:
    """Runs the transform; a failure skips the video (pytorchvideo drops samples mapped to None)."""

    def __init__(self, transform: Callable, dataset: "VideoDataset"):
        self.transform, self.dataset = transform, dataset

    def __call__(self, sample: Dict) -> Optional[Dict]:
        try:
            return self.transform(sample)
        except Exception as e:  # noqa: BLE001
            paths = self.dataset.video_paths
            index = sample.get("video_index", -1)
            path = paths[index] if 0 <= index < len(paths) else sample.get("video_name", "?")
            self.dataset.report_skip(path, f"transform failed: {type(e).__name__}: {e}")
            return None


class VideoDataset(LabeledVideoDataset):
    """pytorchvideo's ``LabeledVideoDataset`` (PyAV, no audio) that skips bad videos.

    Every sample carries ``video``, ``label``, ``video_index`` (position in ``videos``),
    ``clip_index``, ``aug_index``, ``video_name`` and ``fps``. ``video_sampler`` is called with
    the video list and must return the sampler that orders (and shards) it. ``video`` is
    uint8 ``(C, K, H, W)`` before ``transform``: the frames ``frame_selector`` keeps of each
    clip's window (all of them without a selector), each passed through ``frame_transform``
    if given; see ``revvideo.decoding``.
    """

    # pytorchvideo raises after this many unreadable videos in a row; here they are skipped,
    # counted and reported, however many there are.
    _MAX_CONSECUTIVE_FAILURES = sys.maxsize

    def __init__(self, videos: Sequence[Tuple[str, int]], clip_sampler: ClipSampler,
                 video_sampler: Callable[[Sequence], torch.utils.data.Sampler],
                 transform: Optional[Callable[[Dict], Dict]] = None, min_frames: int = 1,
                 frame_selector: Optional[FrameSelector] = None, decoding_threads: int = 1,
                 frame_transform: Optional[FrameTransform] = None):
        labeled = [(path, {"label": int(label), "fps": 0.0}) for path, label in videos]
        self.min_frames = max(1, int(min_frames))
        if int(decoding_threads) < 0:
            raise UserError(f"DATA.DECODING_THREADS must be >= 0 (1: none, 0: one per core), "
                            f"got {decoding_threads}")
        self.frame_selector, self.decoding_threads = frame_selector, int(decoding_threads)
        self.frame_transform = frame_transform
        self.info_by_path: Dict[str, Dict] = {}
        for path, info in labeled:
            self.info_by_path.setdefault(path, info)
        super().__init__(labeled, clip_sampler, video_sampler,
                         transform=_SafeTransform(transform, self) if transform else None,
                         decode_audio=False, decoder="pyav")
        self.video_path_handler = _GuardedPaths(self)

    def report_skip(self, path: str, reason: str) -> None:
        logger.warning(f"skipping video {path}: {reason}")

    @property
    def video_paths(self) -> List[str]:
        return [path for path, _ in self._labeled_videos]

    def expected_ids(self) -> List[int]:
        """Indices of the videos this process reads in the current epoch."""
        return [int(i) for i in self.video_sampler]

    def __len__(self) -> int:  # samples this process yields when no video is skipped
        return len(self.video_sampler)


class WholeVideoSampler(ClipSampler):
    """One "clip" per video spanning all of it (the test views are cut from the frames)."""

    def __init__(self):
        super().__init__(0)

    def __call__(self, last_clip_time, video_duration, annotation) -> ClipInfo:
        return ClipInfo(Fraction(0), Fraction(video_duration) + 1, 0, 0, True)


# ------------------------------------------------------------------------- builders
def dataset_dir(cfg) -> str:
    """The folder holding the split lists: ``DATA.PATH_TO_DATA_DIR`` or the synthetic dataset."""
    if cfg.DATA.DATASET == "synthetic_shapes":
        from .synthetic import ensure_dataset, spec_from_cfg

        if cfg.DATA.PATH_TO_DATA_DIR:
            logger.warning("DATA.PATH_TO_DATA_DIR is ignored for DATA.DATASET synthetic_shapes")
        return str(ensure_dataset(spec_from_cfg(cfg), cfg.DATA.SYNTHETIC.ROOT or None))
    if cfg.DATA.DATASET != "kinetics":
        raise DatasetError(f"unknown DATA.DATASET {cfg.DATA.DATASET!r} "
                           "(expected 'kinetics' or 'synthetic_shapes')")
    return cfg.DATA.PATH_TO_DATA_DIR


def read_split(cfg, split: str) -> VideoList:
    path = find_split(dataset_dir(cfg), split)
    return read_video_list(path, cfg.MODEL.NUM_CLASSES, cfg.DATA.PATH_PREFIX)


def clip_duration(cfg) -> Fraction:
    """Seconds covered by a training clip: NUM_FRAMES x SAMPLING_RATE frames at TARGET_FPS."""
    return Fraction(cfg.DATA.NUM_FRAMES * cfg.DATA.SAMPLING_RATE, cfg.DATA.TARGET_FPS)


def _loader_kwargs(cfg) -> Dict[str, Any]:
    workers = cfg.DATA_LOADER.NUM_WORKERS
    kwargs: Dict[str, Any] = dict(num_workers=workers,
                                  pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available())
    if workers > 0:
        method = cfg.DATA_LOADER.START_METHOD or None
        if method and method not in torch.multiprocessing.get_all_start_methods():
            method = None
        if method:
            kwargs["multiprocessing_context"] = method
        effective = method or torch.multiprocessing.get_start_method(allow_none=True) or "fork"
        if effective != "fork":
            # Workers started by spawn/forkserver cannot share tensors through file descriptors
            # reliably here; the file_system strategy works.
            torch.multiprocessing.set_sharing_strategy("file_system")
    return kwargs


def per_process_batch(total: int, what: str) -> int:
    """``total`` (per machine) divided over this machine's processes."""
    local = comm.get_local_size()
    if total % local:
        raise ValueError(f"{what}={total} is not divisible by the {local} processes per machine")
    return total // local


def build_train_dataset(cfg, videos: Optional[VideoList] = None) -> VideoDataset:
    from .transforms import train_transform

    videos = videos or read_split(cfg, cfg.DATA.TRAIN_SPLIT)
    world, rank, seed = comm.get_world_size(), comm.get_rank(), max(cfg.SEED, 0)

    def sampler(items):
        return DistributedSampler(items, num_replicas=world, rank=rank, shuffle=True, seed=seed)

    return VideoDataset(videos.videos, RandomClipSampler(clip_duration(cfg)), sampler,
                        train_transform(cfg), cfg.DATA.MIN_FRAMES,
                        UniformFrames(cfg.DATA.NUM_FRAMES), cfg.DATA.DECODING_THREADS)


def build_train_loader(cfg, start_epoch: int = 0, dataset: Optional[VideoDataset] = None) -> "EpochLoop":
    dataset = dataset or build_train_dataset(cfg)
    batch = per_process_batch(cfg.TRAIN.BATCH_SIZE, "TRAIN.BATCH_SIZE")
    loader = DataLoader(dataset, batch_size=batch, drop_last=False, collate_fn=collate_clips,
                        **_loader_kwargs(cfg))
    return EpochLoop(dataset, loader, start_epoch)


def build_test_dataset(cfg, videos: Optional[VideoList] = None) -> VideoDataset:
    from .multiview import TestViews
    from .transforms import KeepKeys

    videos = videos or read_split(cfg, cfg.DATA.TEST_SPLIT)
    views = TestViews.from_config(cfg)
    return VideoDataset(videos.videos, WholeVideoSampler(), lambda items: InferenceSampler(len(items)),
                        KeepKeys(views.views_of_prepared), cfg.DATA.MIN_FRAMES, views.select,
                        cfg.DATA.DECODING_THREADS, views.prepare_frame)


def build_test_loader(cfg, dataset: Optional[VideoDataset] = None) -> DataLoader:
    """Lists of ``TEST.BATCH_SIZE`` samples, as Detectron2's test loaders give them (its
    ``trivial_batch_collator``); a sample's ``video`` is its uint8 views ``(views, C, T,
    crop, crop)``. Not collated: ``MultiViewClassifier`` writes each video's views into the
    model's float batch as it normalises them, so no uint8 batch is ever copied together (at
    340x256, collating 4 videos' views into fresh memory took 5-130 ms, against ~200 ms to
    decode them, on this project's machines)."""
    dataset = dataset or build_test_dataset(cfg)
    return DataLoader(dataset, batch_size=cfg.TEST.BATCH_SIZE, drop_last=False,
                      collate_fn=trivial_batch_collator, **_loader_kwargs(cfg))


# ----------------------------------------------------------------------- epoch loop
class EpochLoop:
    """Endless iteration over a ``VideoDataset`` loader, epoch after epoch.

    Sets the sampler's epoch (a fresh shuffle each epoch, identical across processes) and
    at the end of each epoch logs a summary: clips delivered, videos skipped (with names).
    The summaries are kept in ``history``; ``skipped_videos`` goes to Detectron2's event
    storage when one is active (so it lands in ``metrics.json``). An epoch in which no
    video at all could be read is an error.
    """

    def __init__(self, dataset: VideoDataset, loader: DataLoader, start_epoch: int = 0):
        self.dataset, self.loader, self.epoch = dataset, loader, start_epoch
        self.history: List[Dict[str, Any]] = []

    def __iter__(self) -> Iterator[Dict]:
        while True:
            sampler = self.dataset.video_sampler
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            expected = set(self.dataset.expected_ids())
            seen, clips, batches = set(), 0, 0
            for batch in self.loader:
                seen.update(batch["video_index"].tolist())
                clips += len(batch["label"])
                batches += 1
                yield batch
            self._summarise(expected, seen, clips, batches)
            self.epoch += 1

    def _summarise(self, expected, seen, clips: int, batches: int) -> None:
        skipped = sorted(expected - seen)
        paths = self.dataset.video_paths
        names = [paths[i] for i in skipped]
        summary = dict(epoch=self.epoch + 1, clips=clips, batches=batches, videos=len(expected),
                       skipped=len(skipped), skipped_videos=names)
        self.history.append(summary)
        rank = f" (process {comm.get_rank()})" if comm.get_world_size() > 1 else ""
        message = (f"Epoch {self.epoch + 1} done{rank}: {clips} clips in {batches} batches from "
                   f"{len(expected)} videos, {len(skipped)} skipped")
        if skipped:
            message += " (unreadable, corrupt or too short):" + _shorten(names)
            logger.warning(message)
        else:
            logger.info(message)
        try:
            from detectron2.utils.events import get_event_storage

            get_event_storage().put_scalar("skipped_videos", len(skipped), smoothing_hint=False)
        except AssertionError:  # no EventStorage outside a trainer
            pass
        if batches == 0:
            raise RuntimeError(f"epoch {self.epoch + 1}: none of the {len(expected)} videos could "
                               f"be read (see the warnings above); first: {names[:3]}")
