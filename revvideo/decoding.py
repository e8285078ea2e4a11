"""Clips at the speed of the decoder: only the frames a clip keeps are converted to RGB.

pytorchvideo's ``EncodedVideoPyAV.get_clip`` converts every decoded frame of a clip's
window to RGB, stacks them, casts the stack to float32 and only then lets the transform
keep 16 of them. Profiled on a random 16x4 clip of a 1280x720 video (64 frames decoded),
the float cast and the strided ``index_select`` of ``UniformTemporalSubsample`` took 3/4
of the time, decoding 1/8.

``SelectiveVideo`` is that class with ``get_clip`` replaced. It decodes the same window
(pytorchvideo's ``_pyav_decode_stream``: same seek, the frames with PTS in
``[start, end)``), asks its *frame selector* which of the ``n`` decoded frames the clip
keeps, and converts only those to RGB: uint8 ``(C, K, H, W)``. A selector is a picklable
callable ``(n, fps) -> LongTensor`` of indices into the window (repeats allowed; each
frame is converted once); ``UniformFrames`` keeps what ``UniformTemporalSubsample`` keeps,
``revvideo.multiview.TestViews.select`` the official test views' frames. The clip dict
also says how many frames the window had (``decoded_frames``), for ``DATA.MIN_FRAMES``.

``DATA.DECODING_THREADS`` sets PyAV's decoder threads: 1 decodes in the loader's own
thread; n > 1 (or 0: one per core) turns on FFmpeg's frame and slice threading
(``thread_type = "AUTO"``). Loader workers already keep the cores busy, so 1 is the
default (``tools/benchmark_video.py loading`` measures both).
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
from typing import Any, Callable, Dict, List, Optional

import torch
from av.video.reformatter import VideoReformatter
from iopath.common.file_io import g_pathmgr

from . import compat

compat.apply()

from pytorchvideo.data.encoded_video_pyav import EncodedVideoPyAV, _pyav_decode_stream  # noqa: E402
from pytorchvideo.data.utils import secs_to_pts  # noqa: E402
from pytorchvideo.transforms.functional import uniform_temporal_subsample  # noqa: E402

logger = logging.getLogger(__name__)

FrameSelector = Callable[[int, float], torch.Tensor]


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
                 select: Optional[FrameSelector] = None, threads: int = 1):
        super().__init__(file, video_name, decode_audio=False)
        self._select = select
        self._reformatter = VideoReformatter()  # keeps its colour converter between frames
        if self._selective_decoding:  # nothing decoded yet: the codec still takes thread settings
            set_decoding_threads(self._container.streams.video[0], threads)

    @classmethod
    def from_path(cls, path: str, select: Optional[FrameSelector] = None,
                  threads: int = 1) -> "SelectiveVideo":
        """Local files are opened by name (FFmpeg reads them); other URIs through iopath."""
        if os.path.isfile(path):
            source: Any = path
        else:
            with g_pathmgr.open(path, "rb") as f:
                source = io.BytesIO(f.read())
        return cls(source, pathlib.Path(path).name, select, threads)

    @property
    def fps(self) -> float:
        rate = self._container.streams.video[0].average_rate
        return float(rate) if rate else 0.0

    def get_clip(self, start_sec, end_sec) -> Dict[str, Any]:
        """``{"video": (C, K, H, W) uint8 or None, "audio": None, "decoded_frames": n}``."""
        window = self._decode_window(start_sec, end_sec)
        if not window:
            return {"video": None, "audio": None, "decoded_frames": 0}
        index = (self._select(len(window), self.fps) if self._select is not None
                 else torch.arange(len(window)))
        kept, where = torch.unique(index, return_inverse=True)
        frames = torch.stack([self._to_rgb(window[i]) for i in kept.tolist()])  # (K, H, W, C)
        if len(kept) < len(index):
            frames = frames[where]
        return {"video": frames.permute(3, 0, 1, 2), "audio": None, "decoded_frames": len(window)}

    def _to_rgb(self, frame) -> torch.Tensor:
        """``(H, W, 3)`` uint8 of one decoded frame (the only place frames become RGB)."""
        if isinstance(frame, torch.Tensor):  # decoded when the video was opened (see below)
            return frame
        return torch.from_numpy(self._reformatter.reformat(frame, format="rgb24").to_ndarray())

    def _decode_window(self, start_sec, end_sec) -> List:
        """The decoded frames with PTS in ``[start_sec, end_sec)``, in PTS order."""
        stream = self._container.streams.video[0]
        start = secs_to_pts(start_sec, self._video_time_base, self._video_start_pts, round_mode="ceil")
        end = secs_to_pts(end_sec, self._video_time_base, self._video_start_pts, round_mode="ceil")
        if not self._selective_decoding:
            # No duration in the header: pytorchvideo decoded the whole video (to RGB) when
            # opening it, to find the duration.
            return [frame for frame, pts in self._video if start <= pts < end]
        try:
            frames, _ = _pyav_decode_stream(self._container, start, end, stream, {"video": 0})
        except Exception as e:  # noqa: BLE001 - as pytorchvideo: no frames, the caller reports it
            logger.debug(f"Failed to decode video: {self._video_name}. {e}")
            return []
        return frames
