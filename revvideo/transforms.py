"""Training transforms (per clip) and batch mixing, built from pytorchvideo and torchvision.

Per clip (``train_transform``), on the decoded ``(C, T, H, W)`` uint8 clip, whose
``NUM_FRAMES`` frames the decoder already picked as ``UniformTemporalSubsample`` would
(``revvideo.decoding.UniformFrames``):

    RandomShortSideScale(TRAIN_JITTER_SCALES) -> RandomCrop(TRAIN_CROP_SIZE)
    -> RandomHorizontalFlip -> [ToUnitFloat (Div255) -> RandAugment]

Per batch, in the training step (``BatchMix``):

    NormalizeClips(MEAN, STD) -> MixUp / CutMix and label smoothing

The clip stays uint8 through scaling and cropping: scaling 16 frames in uint8 is ~6x faster
than in float32. The random draws (scale, crop, flip) are the same, in the same order, as
when the clip was scaled in float: the pixels differ from float scaling by rounding, at most
one grey level (1/255 before normalisation). Without RandAugment the loader delivers the
clip in uint8 and the step makes it float: a loader worker sends 4x fewer bytes (2.4 MB
instead of 9.6 MB for 16x224x224) and on a GPU the step normalises on the device.
``NormalizeClips`` gives exactly the floats of pytorchvideo's ``Div255`` + ``Normalize``.
(Normalising a batch of uint8 clips through ``BatchMix`` gives the model the same floats
as normalising each clip in the loader did.)

RandAugment (``AUG.ENABLE``) is pytorchvideo's video RandAugment applied on ``(T, C, H, W)``
(``Permute`` around it; pytorchvideo's ``MoveChannelRear/Front`` are broken in 0.1.5), on
float clips in [0, 1]; the loader then delivers those.

``BatchMix`` then applies pytorchvideo's ``MixVideo`` (CutMix with probability
``MIXUP.SWITCH_PROB``, else MixUp) with label smoothing, giving soft targets for
``soft_cross_entropy``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import Compose, RandomCrop, RandomHorizontalFlip

from . import compat

compat.apply()

from pytorchvideo import transforms as ptv_transforms  # noqa: E402
from pytorchvideo.transforms import ApplyTransformToKey, MixVideo, Permute, RandAugment  # noqa: E402
from pytorchvideo.transforms.functional import convert_to_one_hot  # noqa: E402
from torch.utils.data._utils.collate import collate, default_collate_fn_map  # noqa: E402


def numpy_allocated(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory numpy allocates. numpy asks for transparent
    huge pages (madvise), torch's CPU allocator does not: normalising a 16x224x224 clip into
    fresh memory measured 0.7-1.1 ms this way and 5-9 ms into ``torch.empty`` on this
    project's machines, where page faults dominate (``THP_MEM_ALLOC_ENABLE=1`` did not
    help)."""
    return torch.from_numpy(np.empty(tuple(shape), dtype=torch.empty(0, dtype=dtype).numpy().dtype))


def collate_clips(batch: List) -> Any:
    """torch's ``default_collate``, except that tensors are stacked in their own memory layout
    (decoded clips are ``(T, H, W, C)`` in memory; a transposing stack into ``(C, T, H, W)``
    measured 18 ms per batch of 8 clips of 16x224x224, against 11 ms keeping the layout), into
    shared memory in a loader worker, as ``default_collate`` does, and into numpy-allocated
    memory in the loader's own process (see ``numpy_allocated``: collating 4 test videos'
    views, 48 MB, into fresh torch memory took ~20 ms at 340x256, mostly page faults)."""
    return collate(batch, collate_fn_map={**default_collate_fn_map, torch.Tensor: _stack_keeping_layout})


def _stack_keeping_layout(batch: List[torch.Tensor], *, collate_fn_map=None) -> torch.Tensor:
    def torch_stack():  # default_collate's own way: its error for ragged shapes
        return default_collate_fn_map[torch.Tensor](batch, collate_fn_map=collate_fn_map)

    first = batch[0]
    if first.device.type != "cpu" or any(x.shape != first.shape for x in batch):
        return torch_stack()
    order = sorted(range(first.dim()), key=lambda d: -first.stride(d))  # outermost dim first
    shape = (len(batch), *(first.shape[d] for d in order))
    if torch.utils.data.get_worker_info() is not None:  # as default_collate allocates there
        storage = first._typed_storage()._new_shared(len(batch) * first.numel(), device=first.device)
        memory = first.new(storage).view(shape)
    else:
        try:
            memory = numpy_allocated(shape, first.dtype)
        except TypeError:  # a dtype numpy does not have (bfloat16)
            return torch_stack()
    out = memory.permute(0, *(order.index(d) + 1 for d in range(first.dim())))
    for row, x in zip(out, batch):
        row.copy_(x)
    return out


def short_side_scaled(h: int, w: int, size: int) -> Tuple[int, int]:
    """The ``(height, width)`` pytorchvideo's ``short_side_scale`` gives a frame of ``(h, w)``."""
    return (math.floor(h / w * size), size) if w < h else (size, math.floor(w / h * size))


def scale_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo's ``short_side_scale`` (same output size, bilinear, ``align_corners=False``)
    for uint8 as well as float ``(C, T, H, W)`` clips.

    Decoded frames are stored ``(T, H, W, C)``, so the ``(T, C, H, W)`` view is channels-last,
    the layout of torch's fast uint8 kernel. A clip already at the size is returned as it is
    (bilinear scaling to the same size is the identity).
    """
    c, t, h, w = video.shape
    new_h, new_w = short_side_scaled(h, w, size)
    if (new_h, new_w) == (h, w):
        return video
    frames = video.permute(1, 0, 2, 3)
    out = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return out.permute(1, 0, 2, 3)


class RandomShortSideScale(ptv_transforms.RandomShortSideScale):
    """pytorchvideo's ``RandomShortSideScale`` (same random size) for uint8 clips too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.randint(self._min_size, self._max_size + 1, (1,)).item()
        return scale_short_side(x, size)


class ToUnitFloat(torch.nn.Module):
    """pytorchvideo's ``Div255`` (same values) that first makes the clip contiguous
    ``(C, T, H, W)`` while it is still uint8 and small: decoded frames are laid out
    ``(T, H, W, C)``, and the transposing copy moves 4x fewer bytes before the float
    conversion than after it; RandAugment then works on contiguous frames.
    (``uint8 / 255.0`` computes the same floats as ``float().div_(255.0)`` but measured
    10-40x slower in torch 2.14.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous().float().div_(255.0)


class Contiguous(torch.nn.Module):
    """The clip in contiguous ``(C, T, H, W)`` memory (see ``ToUnitFloat``): copied, except
    in a loader worker, which sends the batch as ``collate_clips`` stacked it, in the
    decoder's layout (copying then collating 8 clips of 16x224x224 there measured 22 ms,
    collating them as they are 11 ms); the training step's normalisation, on the GPU in
    practice, then makes them channels-first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous() or torch.utils.data.get_worker_info() is not None:
            return x
        return numpy_allocated(x.shape, x.dtype).copy_(x)


class NormalizeClips:
    """Clips of pixel values in ``[0, max_value]`` (uint8 or float) -> the model's input,
    channels at dim -4 (``(C, T, H, W)``, ``(B, C, T, H, W)``, ...).

    The floats are exactly pytorchvideo's ``Normalize(mean, std)(Div255()(clip))`` for
    ``max_value`` 255, and ``Normalize(mean, std)(clip)`` for 1; written into ``out`` if
    given (a float tensor of the clips' shape), else into a new tensor.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], max_value: float = 255.0):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
        self.max_value = float(max_value)

    @classmethod
    def from_config(cls, cfg) -> "NormalizeClips":
        """For ``train_transform``'s clips: in [0, 1] after RandAugment, else uint8."""
        return cls(cfg.DATA.MEAN, cfg.DATA.STD, 1.0 if cfg.AUG.ENABLE else 255.0)

    def __call__(self, clips: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        if out is None:
            out = _float_tensor(clips.shape, clips.device)
        out.copy_(clips)
        if self.max_value != 1.0:
            out.div_(self.max_value)
        return out.sub_(self.mean.to(out.device)).div_(self.std.to(out.device))

    def stacked(self, clips: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
        """Equal-shaped ``clips`` normalised into one float batch on ``device``: each is
        written into its row as it is normalised, never stacked in its own dtype first."""
        out = _float_tensor((len(clips), *clips[0].shape), device)
        for row, clip in zip(out, clips):
            self(clip.to(device, non_blocking=True), out=row)
        return out


def _float_tensor(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    if torch.device(device).type == "cpu":
        return numpy_allocated(shape)
    return torch.empty(tuple(shape), dtype=torch.float32, device=device)


class KeepKeys:
    """Applies ``transform`` to a sample dict and keeps only the keys the loops use."""

    KEYS = ("video", "label", "video_index", "clip_index", "fps")

    def __init__(self, transform: Callable[[Dict], Dict]):
        self.transform = transform

    def __call__(self, sample: Dict) -> Dict:
        sample = self.transform(sample)
        return {k: sample[k] for k in self.KEYS}


def parse_rand_augment(spec: str) -> Dict[str, float]:
    """``"rand-m7-n4-mstd0.5-inc1"`` -> ``{"magnitude": 7, "num_layers": 4, "mstd": 0.5}``."""
    parts = spec.split("-")
    if not parts or parts[0] != "rand":
        raise ValueError(f"AUG.AA_TYPE must look like 'rand-m7-n4-mstd0.5', got {spec!r}")
    out = {"magnitude": 9, "num_layers": 2, "mstd": 0.5}
    for part in parts[1:]:
        m = re.fullmatch(r"(mstd|m|n|inc|mmax|p)([0-9.]+)", part)
        if m is None:
            raise ValueError(f"AUG.AA_TYPE {spec!r}: cannot read {part!r}")
        key, value = m.groups()
        if key == "m":
            out["magnitude"] = int(float(value))
        elif key == "n":
            out["num_layers"] = int(value)
        elif key == "mstd":
            out["mstd"] = float(value)
        elif key == "p":
            out["prob"] = float(value)
    return out


def rand_augment(spec: str) -> Compose:
    """pytorchvideo RandAugment on a ``(C, T, H, W)`` clip in [0, 1]."""
    p = parse_rand_augment(spec)
    sampling = {"sampling_data_type": "int", "sampling_min": 0, "sampling_std": p["mstd"]}
    aug = RandAugment(magnitude=p["magnitude"], num_layers=p["num_layers"],
                      prob=p.get("prob", 0.5), sampling_type="gaussian", sampling_hparas=sampling)
    return Compose([Permute((1, 0, 2, 3)), aug, Permute((1, 0, 2, 3))])


def clip_transform(cfg) -> Compose:
    """The per-clip training transform of the ``video`` tensor (see the module docstring):
    pixel values, normalised by ``BatchMix`` in the training step."""
    d = cfg.DATA
    lo, hi = d.TRAIN_JITTER_SCALES
    ops = [RandomShortSideScale(lo, hi), RandomCrop(d.TRAIN_CROP_SIZE)]
    if d.RANDOM_FLIP:
        ops.append(RandomHorizontalFlip(p=0.5))
    if cfg.AUG.ENABLE:
        ops += [ToUnitFloat(), rand_augment(cfg.AUG.AA_TYPE)]
    else:
        ops.append(Contiguous())
    return Compose(ops)


def train_transform(cfg) -> KeepKeys:
    """Sample-dict transform for ``VideoDataset``: the clip transform on ``video``."""
    return KeepKeys(ApplyTransformToKey("video", clip_transform(cfg)))


class BatchMix:
    """The training step's batch transform: the loader's clips normalised (``normalize``,
    if given), then MixUp / CutMix and label smoothing -> ``(videos, soft targets)``."""

    def __init__(self, num_classes: int, enable: bool = True, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.1, normalize: Optional[NormalizeClips] = None):
        self.num_classes, self.prob, self.label_smoothing = num_classes, prob, label_smoothing
        self.normalize = normalize
        self.mix = None
        if enable and prob > 0 and (mixup_alpha > 0 or cutmix_alpha > 0):
            cutmix_prob = switch_prob if mixup_alpha > 0 and cutmix_alpha > 0 else float(cutmix_alpha > 0)
            self.mix = MixVideo(cutmix_prob=cutmix_prob, mixup_alpha=mixup_alpha or 1.0,
                                cutmix_alpha=cutmix_alpha or 1.0, label_smoothing=label_smoothing,
                                num_classes=num_classes)

    @classmethod
    def from_config(cls, cfg) -> "BatchMix":
        m = cfg.MIXUP
        return cls(cfg.MODEL.NUM_CLASSES, m.ENABLE, m.ALPHA, m.CUTMIX_ALPHA, m.PROB,
                   m.SWITCH_PROB, m.LABEL_SMOOTH_VALUE, NormalizeClips.from_config(cfg))

    def __call__(self, videos: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.normalize is not None:
            videos = self.normalize(videos)
        if self.mix is not None and videos.shape[0] > 1 and torch.rand(1).item() < self.prob:
            videos, targets = self.mix(videos, labels)
            return videos, targets.float()
        return videos, convert_to_one_hot(labels, self.num_classes, self.label_smoothing).float()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The official soft_cross_entropy, ``-sum(targets * log_softmax(logits))`` averaged over
    the batch: ``F.cross_entropy`` with class-probability targets, which ``BatchMix`` gives."""
    return F.cross_entropy(logits, targets)
