"""Clips at the speed of the decoder: only the frames a clip keeps are converted to RGB.

pytorchvideo's ``EncodedVideoPyAV.get_clip`` converts every decoded frame of a clip's
window to RGB, stacks them, casts the stack to float32 and only then lets the transform
keep 16 of them. Profiled on a random 16x4 clip of a 1280x720 video (64 frames decoded),
the float cast and the strided ``index_select`` of ``UniformTemporalSubsample`` took 3/4
of the time, decoding 1/8.

``SelectiveVideo`` is that class with ``get_clip`` replaced. It decodes the same window
(as pytorchvideo's ``_pyav_decode_stream``: same seek, the frames with PTS in
``[start, end)``), asks its *frame selector* which of the ``n`` decoded frames the clip
keeps, and converts only those to RGB: uint8 ``(C, K, H, W)``. A selector is a picklable
callable ``(n, fps) -> LongTensor`` of indices into the window (repeats allowed; each
frame is converted once); ``UniformFrames`` keeps what ``UniformTemporalSubsample`` keeps,
``revvideo.multiview.TestViews.select`` the official test views' frames. The clip dict
also says how many frames the window had (``decoded_frames``), for ``DATA.MIN_FRAMES``.
An optional *frame transform* is applied to each converted frame before the clip is
stacked: the test views scale and crop their 80 frames there (``TestViews.prepare_frame``),
so a 720p clip of 80 frames (221 MB, a second of page faults on this project's machines)
never exists. A clip is a ``(C, K, H, W)`` view of ``(K, H, W, C)`` memory, the frames as
converted (``SelectiveVideo._stack``).

A whole video (the test views) is decoded without the frames that are neither kept nor
referred to by other frames (``SelectiveVideo._decode_unkept_skipped``; H.264's
non-reference B-frames) and only up to the last kept frame: the frames delivered are the
same, and of the benchmark's 10 s videos at 25 fps, 91 of 250 frames are not decoded at
340x256 (x264 gave them B-frames), 40 of 250 at 720p (it gave those none).

``DATA.DECODING_THREADS`` sets PyAV's decoder threads: 1 decodes in the loader's own
thread; n > 1 (or 0: one per core) turns on FFmpeg's frame and slice threading
(``thread_type = "AUTO"``), which gives the same frames. The default, 1, is
``tools/benchmark_video.py loading``'s measurement: with as many loader workers as
cores, extra decoder threads only compete with the workers.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from iopath.common.file_io import g_pathmgr

from . import compat

compat.apply()

from pytorchvideo.data.encoded_video_pyav import EncodedVideoPyAV  # noqa: E402
from pytorchvideo.data.utils import secs_to_pts  # noqa: E402
from pytorchvideo.transforms.functional import uniform_temporal_subsample  # noqa: E402

logger = logging.getLogger(__name__)

FrameSelector = Callable[[int, float], torch.Tensor]
FrameTransform = Callable[[torch.Tensor], torch.Tensor]  # (H, W, 3) uint8 -> (H', W', 3) uint8


class UniformFrames:
    """Selects ``num_frames`` frames evenly spread over the window, as pytorchvideo's
    ``UniformTemporalSubsample`` picks them from a decoded clip."""

    def __init__(self, num_frames: int):
        self.num_frames = num_frames

    def __call__(self, num_decoded: int, fps: float = 0.0) -> torch.Tensor:
        return uniform_temporal_subsample(torch.arange(num_decoded), self.num_frames, temporal_dim=0)


def set_decoding_threads(stream, threads: int) -> None:
    """One decoding thread for ``threads == 1``; else frame+slice threading (0: per core)."""
    if threads != 1:
        stream.thread_type = "AUTO"
    stream.thread_count = threads


class SelectiveVideo(EncodedVideoPyAV):
    """pytorchvideo's PyAV video whose clips are the selected frames only, in uint8."""

    def __init__(self, file, video_name: Optional[str] = None,
                 select: Optional[FrameSelector] = None, threads: int = 1,
                 frame_transform: Optional[FrameTransform] = None):
        super().__init__(file, video_name, decode_audio=False)
        self._select, self._frame_transform, self._threads = select, frame_transform, threads
        self.frames_skipped = 0  # not decoded by the last ``_decode_unkept_skipped``
        self._reformatter = VideoReformatter()  # keeps its colour converter between frames
        if self._selective_decoding:  # nothing decoded yet: the codec still takes thread settings
            set_decoding_threads(self._container.streams.video[0], threads)

    @classmethod
    def from_path(cls, path: str, select: Optional[FrameSelector] = None, threads: int = 1,
                  frame_transform: Optional[FrameTransform] = None) -> "SelectiveVideo":
        """Local files are opened by name (FFmpeg reads them); other URIs through iopath."""
        if os.path.isfile(path):
            source: Any = path
        else:
            with g_pathmgr.open(path, "rb") as f:
                source = io.BytesIO(f.read())
        return cls(source, pathlib.Path(path).name, select, threads, frame_transform)

    @property
    def fps(self) -> float:
        rate = self._container.streams.video[0].average_rate
        return float(rate) if rate else 0.0

    def get_clip(self, start_sec, end_sec) -> Dict[str, Any]:
        """``{"video": (C, K, H, W) uint8 or None, "audio": None, "decoded_frames": n}``."""
        window = self._decode_window(start_sec, end_sec)
        if window is None or not window[0]:
            return {"video": None, "audio": None, "decoded_frames": 0}
        pts, frames_by_pts = window
        index = self._indices(len(pts))
        kept, where = torch.unique(index, return_inverse=True)
        frames = [self._prepared(frames_by_pts[pts[i]]) for i in kept.tolist()]
        return {"video": self._stack(frames, where.tolist()), "audio": None, "decoded_frames": len(pts)}

    def _stack(self, frames: List[np.ndarray], where: List[int]) -> torch.Tensor:
        """``(C, K, H, W)`` uint8: ``frames[where[k]]`` at position ``k``.

        The frames are stacked as they come, ``(K, H, W, C)``, and seen as ``(C, K, H, W)``
        (channels-last strides): the layout of torch's fast uint8 scaling, which the
        training transform does next, and no transposing copy here. The one copy that makes
        a clip or view contiguous channels-first comes later anyway (the training
        transform's ``Contiguous``, collating in a loader worker, or the float copy of the
        normalisation), and does the transpose on the way (profiled at 340x256: a transposing
        write per frame here cost about as much as converting the frame to RGB). numpy
        allocates the clip: filling a fresh 44 MB numpy array (16 frames of 720p) measured
        4-5x faster than a fresh torch tensor on this project's machines, where page faults
        are expensive (numpy asks for huge pages with madvise, torch does not).
        """
        stacked = np.stack([frames[k] for k in where])
        return torch.from_numpy(stacked).permute(3, 0, 1, 2)  # (K, H, W, C) -> (C, K, H, W)

    def _indices(self, num_decoded: int) -> torch.Tensor:
        if self._select is None:
            return torch.arange(num_decoded)
        return self._select(num_decoded, self.fps)

    def _prepared(self, frame) -> np.ndarray:
        """A decoded frame converted and transformed (unless ``_decode`` already did)."""
        if isinstance(frame, np.ndarray):
            return frame
        rgb = self._to_rgb(frame)
        if self._frame_transform is None:
            return rgb
        # copied out at once: the converter's frame buffer is then reused, hot, for the next
        # frame, instead of one fresh (page-faulting) buffer held per kept frame
        return np.ascontiguousarray(self._frame_transform(torch.from_numpy(rgb)).numpy())

    def _to_rgb(self, frame) -> np.ndarray:
        """``(H, W, 3)`` uint8 of one decoded frame (the only place frames become RGB)."""
        if isinstance(frame, torch.Tensor):  # decoded when the video was opened (see below)
            return frame.numpy()
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()

    def _decode_window(self, start_sec, end_sec) -> Optional[Tuple[List[int], Dict[int, Any]]]:
        """The sorted PTS of the frames in ``[start_sec, end_sec)`` and, by PTS, those of them
        the selector keeps (at least); None if decoding fails.

        A window is short, so all its frames are kept until it is known how many there are.
        For the whole video, the header's frame count says in advance which frames the
        selector will keep, and only those are converted as they are decoded (a 10 s 720p
        video's other frames would hold ~400 MB; and the decoder reuses the buffers of frames
        it no longer holds); if the count turns out wrong, the kept frames are decoded again.
        """
        start = secs_to_pts(start_sec, self._video_time_base, self._video_start_pts, round_mode="ceil")
        end = secs_to_pts(end_sec, self._video_time_base, self._video_start_pts, round_mode="ceil")
        if not self._selective_decoding:
            # No duration in the header: pytorchvideo decoded the whole video (to RGB) when
            # opening it, to find the duration.
            frames = {pts: frame for frame, pts in self._video if start <= pts < end}
            return sorted(frames), frames
        expected = self._expected_frames(start_sec, end_sec)
        guess = set(self._indices(expected).tolist()) if expected > 0 else None
        try:
            pts, frames = self._decode(start, end, lambda i, _: guess is None or i in guess,
                                       convert=guess is not None)
            wanted = [pts[i] for i in self._indices(len(pts)).tolist()] if pts else []
            if any(p not in frames for p in wanted):  # the header's frame count was wrong
                wanted = set(wanted)
                _, frames = self._decode(start, end, lambda _, p: p in wanted, convert=True)
        except Exception as e:  # noqa: BLE001 - as pytorchvideo: no frames, the caller reports it
            logger.debug(f"Failed to decode video: {self._video_name}. {e}")
            return None
        return pts, frames

    def _expected_frames(self, start_sec, end_sec) -> int:
        """The header's frame count for the whole video (0: unknown, or only a window)."""
        whole = start_sec <= 0 and end_sec > self.duration
        return (self._container.streams.video[0].frames or 0) if whole else 0

    def _decode(self, start: int, end: int, keep: Callable[[int, int], bool], convert: bool = False):
        """Seeks and decodes as pytorchvideo's ``_pyav_decode_stream`` does: the sorted PTS of
        the frames with PTS in ``[start, end)``, and by PTS (the last of equal PTS) the frames
        for which ``keep(position among the PTS so far, PTS)`` holds, ``_prepared`` if
        ``convert`` (the whole video: ``_decode_unkept_skipped`` first)."""
        stream = self._container.streams.video[0]
        if convert and self._threads == 1:
            decoded = self._decode_unkept_skipped(start, end, keep)
            if decoded is not None:
                return decoded
        self._container.seek(int(max(start - 1024, 0)), any_frame=False, backward=True, stream=stream)
        seen: set = set()
        frames: Dict[int, Any] = {}
        for frame in self._container.decode(video=0):
            if frame.pts >= end:
                break
            if frame.pts >= start:
                if frame.pts in frames or keep(len(seen), frame.pts):
                    frames[frame.pts] = self._prepared(frame) if convert else frame
                seen.add(frame.pts)
        return sorted(seen), frames

    def _decode_unkept_skipped(self, start: int, end: int, keep: Callable[[int, int], bool]):
        """``_decode`` of a whole video, converting, that does not decode the frames that are
        neither kept nor referred to by other frames (FFmpeg's ``skip_frame`` "NONREF", set
        packet by packet): the 80 frames of the test views are about a third of a 10 s video,
        and a fifth of the frames of the benchmark's 340x256 H.264 videos are non-reference
        B-frames.

        Decoding stops once the last kept frame is out: the last official test clip ends a fifth
        of (video - clip) before the video does (in a 10 s video, 1.6 s no view looks at).
        The frames are known in advance from the packets: all of them are read first, and their
        PTS are the frames' (one frame per packet). None, for ``_decode`` to decode every
        frame, if a packet has no PTS, a kept frame does not come out of the decoder, or a frame
        comes out that no packet announced. Only with one decoding thread (FFmpeg's frame
        threads would see the setting change under them).
        """
        stream = self._container.streams.video[0]
        self._container.seek(int(max(start - 1024, 0)), any_frame=False, backward=True, stream=stream)
        packets = [packet for packet in self._container.demux(stream) if packet.size]
        if not packets or any(packet.pts is None for packet in packets):
            return None
        seen = sorted({packet.pts for packet in packets if start <= packet.pts < end})
        wanted = {pts for i, pts in enumerate(seen) if keep(i, pts)}
        codec, frames, decoded = stream.codec_context, {}, set()
        try:
            for packet in packets + [None]:  # None: drain the frames the decoder still holds
                if packet is not None:
                    codec.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                for frame in codec.decode(packet):
                    decoded.add(frame.pts)
                    if frame.pts in wanted:
                        frames[frame.pts] = self._prepared(frame)
                if len(frames) == len(wanted):  # the rest of the video is not needed
                    break
        finally:
            codec.skip_frame = "DEFAULT"
        if set(frames) != wanted or not decoded <= {packet.pts for packet in packets}:
            return None
        self.frames_skipped = len(packets) - len(decoded)
        return seen, frames
