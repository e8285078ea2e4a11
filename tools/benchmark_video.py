#!/usr/bin/env python
"""Video benchmarks: data loading speed, and training-step memory of Rev-MViT-B 16x4 vs MViT-B.

    python tools/benchmark_video.py loading              # clips/s and ratios to the decoder floor
    python tools/benchmark_video.py memory               # one training step at batch 1, 16x224x224
    python tools/benchmark_video.py accum --batch-size 4 --accum 4 --frames 8
    python tools/benchmark_video.py all --out output/benchmark_video

``loading`` times, in one process with ``torch.set_num_threads(1)``, random 16x4 clips of
camera-like H.264 videos (340x256 and 1280x720, 25 and 30 fps, 10 s; written once by PyAV
into the cache) through: the decoder floor (PyAV alone: seek, decode every frame of the
clip's window, convert only the 16 kept frames to RGB), revvideo's decoding alone, the
same through pytorchvideo's ``EncodedVideoPyAV`` (the "before"), the training pipeline of
``configs/kinetics_revmvit_b_16x4.yaml`` (without and with RandAugment; MixUp acts on
batches, not here): the loader's uint8 clips, the same normalised in this process as the
training step does (``revvideo.transforms.NormalizeClips``), with ``DATA.DECODING_THREADS``
2 and with 2 loader workers; and the test views (the whole video decoded once, 5 clips x 1
crop; uint8, and normalised as ``MultiViewClassifier`` does) against one full decode of the
video. The train and test pipelines are the loaders users get (``build_train_loader``'s
with ``TRAIN.BATCH_SIZE`` ``--loader-batch``, ``build_test_loader``'s with the config's
``TEST.BATCH_SIZE``): collated batches (the test loader's: lists of samples), in the
workers when there are any; throughput is counted in clips (or videos) and batches per
second, without the first batch of each loader worker (its start-up; in one process, the
first batch), so 0 and 2 workers are timed from their steady state (``--loader-batch 0``:
one clip or video per item, not collated, as this benchmark measured before). Every
pipeline runs once per round on the same random clips (interleaved; loader workers draw
their own), and each ratio is the median over rounds of a ratio taken within a round.
``--pipelines`` runs some of them (with their references).

``memory`` runs each model in a fresh process (this script with the hidden ``--worker``
flag): build, one warm-up training step, then the measured step (forward, cross-entropy,
backward). It reports the peak resident memory of the measured step above the resident
memory just before it (``/proc/self/clear_refs`` then ``VmHWM``; freed heap returned
with ``malloc_trim`` first), that peak without the fp32 parameter gradients, the same peak
in one more fresh process in which glibc returns every freed block >= 64 KiB at once
(``measure.MMAP_MALLOC_ENV``: live tensors only, no heap fragmentation; the
CPU analogue of ``torch.cuda.max_memory_allocated``), the bytes of tensors saved for
backward during the forward (exact activation memory, each storage counted once), and the
step time. Absolute numbers are noisy on a small shared machine; the ratios come from the
same run.

``accum`` compares a batch of ``--batch-size`` clips reached directly (``ACCUM_ITER`` 1)
with the same batch reached by accumulating ``--accum`` micro-batches
(``backbones.training.Accumulator``, as ``tools/train_video.py`` does), for Rev-MViT-B 16x4
(transitions recomputed) and MViT-B 16x4. A step is ``zero_grad(set_to_none=True)``, then
forward + cross-entropy + backward of every micro-batch (no optimizer update, which costs
the same either way). Each (model, N) runs in fresh processes: the step's resident peak
above the RSS before it (gradients included, after a warm-up step and ``malloc_trim``), the
same with mmap malloc, and the exact live-tensor peak of the step
(``measure.LiveTensorPeak``). Step time per clip: in the accumulating process, ``--steps``
rounds each timing the batch at once, accumulated, and as separate micro-batch steps
(``measure.accumulation_times``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from measure import (MMAP_MALLOC_ENV, LiveTensorPeak, accumulated_step,  # noqa: E402
                     accumulation_times, markdown_table, rotated, run_fresh, saved_tensor_meter,
                     step_peak_mb)

MB = 1e6
MEMORY_VARIANTS = {  # key -> (label, zoo name, reversible backprop, recompute transitions)
    "rev_mvit_b_16x4": ("Rev-MViT-B 16x4, transitions recomputed (kinetics_revmvit_b_16x4.yaml)",
                        "rev_mvit_b_16x4", True, True),
    "rev_mvit_b_16x4_stored": ("Rev-MViT-B 16x4, transitions stored (as the official model)",
                               "rev_mvit_b_16x4", True, False),
    "rev_mvit_b_16x4_autograd": ("Rev-MViT-B 16x4, plain autograd", "rev_mvit_b_16x4", False, False),
    "mvit_b_16x4": ("Rev-MViT-B 16x4's non-reversible twin", "nonrev_mvit_b_16x4", True, False),
}


# -------------------------------------------------------------------------------- loading
LOADING_SIZES = {"340x256": (340, 256), "1280x720": (1280, 720)}
LOADING_FPS = (25, 30)
VIDEO_SECONDS = 10
CLIP_FRAMES = 16
# key -> (label, unit, reference key, items per round as a fraction of --clips or --test-videos;
# twice as many with loader workers: each worker's clips differ from the other pipelines' and
# from the other worker's, and with 48 clips a worker delivered only 3 timed batches)
PIPELINES = {
    "floor": ("decoder floor: seek, decode the clip's window, RGB for the 16 kept frames",
              "clips/s", "floor", 1.0),
    "decode": ("revvideo decode only: 16x4 clip, 16 frames kept (uint8)", "clips/s", "floor", 1.0),
    "pytorchvideo": ("before: pytorchvideo EncodedVideoPyAV + UniformTemporalSubsample (float)",
                     "clips/s", "floor", 0.25),
    "train": ("revvideo train loader: short side 256-320, crop 224, flip (uint8 clips)",
              "clips/s", "floor", 1.0),
    "train_normalised": ("revvideo train loader, each clip then normalised here as by the step",
                         "clips/s", "floor", 1.0),
    "train_randaug": ("revvideo train + RandAugment m7-n4", "clips/s", "floor", 1.0),
    "train_threads": ("revvideo train, DATA.DECODING_THREADS 2 (FFmpeg frame threads)",
                      "clips/s", "floor", 1.0),
    "train_2_workers": ("revvideo train, 2 loader workers", "clips/s", "train", 2.0),
    "train_2_workers_threads": ("revvideo train, 2 loader workers, DATA.DECODING_THREADS 2",
                                "clips/s", "train_2_workers", 2.0),
    "full_decode": ("decode every frame of the video (no RGB)", "videos/s", "full_decode", 1.0),
    "test": ("revvideo test views: whole video decoded once, 5 clips x 1 crop 224 (uint8 views)",
             "videos/s", "full_decode", 1.0),
    "test_normalised": ("revvideo test views, then normalised here as by MultiViewClassifier",
                        "videos/s", "full_decode", 1.0),
}
WORKERS = {"train_2_workers": 2, "train_2_workers_threads": 2}
THREADS = {"train_threads": 2, "train_2_workers_threads": 2}


def _write_benchmark_video(path: Path, width: int, height: int, fps: int, seed: int) -> None:
    """H.264 (libx264, crf 23, yuv420p) of a smooth moving colour pattern with mild noise:
    camera-like content for the decoder, the same picture at every resolution."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) * (340 / width)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        stream.thread_count = 1
        for i in range(VIDEO_SECONDS * fps):
            t = i / fps + seed
            rgb = np.stack([128 + 100 * np.sin(x / 37 + 3 * t) * np.cos(y / 23 - 2 * t),
                            128 + 100 * np.sin((x + y) / 51 + t),
                            128 + 60 * np.cos(x / 17 - y / 29 + 5 * t)], -1)
            rgb += rng.normal(0, 4, rgb.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def loading_videos(per_rate: int, sizes: List[str]) -> Dict[str, List[str]]:
    """``per_rate`` videos of each size at 25 and 30 fps, generated once into the cache."""
    from revvideo.synthetic import default_root

    root = default_root().parent / "benchmark_videos"
    root.mkdir(parents=True, exist_ok=True)
    videos: Dict[str, List[str]] = {}
    for size in sizes:
        width, height = LOADING_SIZES[size]
        for fps in LOADING_FPS:
            for i in range(per_rate):
                path = root / f"v1_{size}_{fps}fps_{VIDEO_SECONDS}s_{i}.mp4"
                if not path.is_file():
                    print(f"writing {path}", flush=True)
                    _write_benchmark_video(path, width, height, fps, seed=i)
                videos.setdefault(size, []).append(str(path))
    return videos


def floor_clips(paths: List[str], clip_seconds):
    """The decoder floor: per video, PyAV alone (one thread) seeks, decodes the window of a
    random clip (drawn as ``RandomClipSampler`` draws it) and converts its 16 kept frames
    (with one reused converter, the fastest way PyAV offers)."""
    import av
    import torch
    from av.video.reformatter import VideoReformatter
    from pytorchvideo.data.clip_sampling import RandomClipSampler
    from pytorchvideo.data.utils import pts_to_secs, secs_to_pts

    sampler = RandomClipSampler(clip_seconds)
    rgb = VideoReformatter()
    for path in paths:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            base, first = stream.time_base, stream.start_time or 0
            clip = sampler(0, pts_to_secs(stream.duration, base, first), {})
            start = secs_to_pts(clip.clip_start_sec, base, first, round_mode="ceil")
            end = secs_to_pts(clip.clip_end_sec, base, first, round_mode="ceil")
            container.seek(max(start - 1024, 0), stream=stream)
            window = []
            for frame in container.decode(stream):
                if frame.pts >= end:
                    break
                if frame.pts >= start:
                    window.append(frame)
            keep = torch.linspace(0, len(window) - 1, CLIP_FRAMES).long().tolist()
            yield [rgb.reformat(window[i], format="rgb24").to_ndarray() for i in keep]


def full_decodes(paths: List[str]):
    """Every frame of each video decoded (one thread), none converted: one full decode."""
    import av

    for path in paths:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            yield sum(1 for _ in container.decode(stream))


def _loading_cfg(aug: bool = False, threads: int = 1, workers: int = 0, batch: int = 8):
    import revvideo

    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(Path(__file__).resolve().parent.parent / "configs" / "kinetics_revmvit_b_16x4.yaml"))
    cfg.merge_from_list(["AUG.ENABLE", aug, "DATA.DECODING_THREADS", threads,
                         "DATA_LOADER.NUM_WORKERS", workers, "TRAIN.BATCH_SIZE", batch])
    return cfg


def loader_batch(key: str, train_batch: int) -> int:
    """Clips (or test videos) per item of pipeline ``key``: the batches of the user's loaders
    for the train and test pipelines (``train_batch`` 0: single clips and videos, the
    measurement before batches), single clips for the others."""
    if key.startswith("train") and train_batch:
        return train_batch
    return _loading_cfg().TEST.BATCH_SIZE if key.startswith("test") and train_batch else 1


def warmup_items(key: str) -> int:
    """Items not timed: the first batch of each loader worker (its start-up and first seek),
    or the first item in this process."""
    return max(1, WORKERS.get(key, 0))


def pipeline_items(key: str, paths: List[str], train_batch: int = 8):
    """An iterable of the items of pipeline ``key`` over ``paths``, in order: clips or
    videos, or for the train and test pipelines the batches of the loaders users get
    (``build_train_loader``'s with ``TRAIN.BATCH_SIZE`` ``train_batch``, ``build_test_loader``'s
    with the config's ``TEST.BATCH_SIZE``, lists of samples; in loader workers if any)."""
    import torch

    import revvideo  # noqa: F401  (first: pytorchvideo's torchvision import fix)
    from pytorchvideo.data import LabeledVideoDataset
    from pytorchvideo.data.clip_sampling import RandomClipSampler
    from pytorchvideo.transforms import ApplyTransformToKey, UniformTemporalSubsample
    from revvideo.data import (VideoDataset, VideoList, build_test_dataset, build_test_loader,
                               build_train_loader, clip_duration)
    from revvideo.decoding import UniformFrames
    from revvideo.transforms import NormalizeClips, train_transform

    cfg = _loading_cfg(aug=key == "train_randaug", threads=THREADS.get(key, 1),
                       workers=WORKERS.get(key, 0), batch=train_batch)
    seconds = clip_duration(cfg)
    rows = [(path, 0) for path in paths]
    in_order = lambda items: torch.utils.data.SequentialSampler(items)  # noqa: E731
    if key == "floor":
        return floor_clips(paths, seconds)
    if key == "full_decode":
        return full_decodes(paths)
    if key in ("train_normalised", "test_normalised"):
        normalise = NormalizeClips(cfg.DATA.MEAN, cfg.DATA.STD)  # uint8 clips and views
        unnormalised = pipeline_items(key.split("_")[0], paths, train_batch)
        if key == "test_normalised" and train_batch:  # lists of samples, as MultiViewClassifier
            return (dict(video=normalise.stacked([s["video"] for s in batch], torch.device("cpu")),
                         label=torch.tensor([s["label"] for s in batch])) for batch in unnormalised)
        return (dict(batch, video=normalise(batch["video"])) for batch in unnormalised)
    if key == "test":
        dataset = build_test_dataset(cfg, VideoList(rows, "benchmark", None))
        if train_batch:
            return build_test_loader(cfg, dataset)
        return torch.utils.data.DataLoader(dataset, batch_size=None)
    if key == "pytorchvideo":
        dataset = LabeledVideoDataset([(p, {"label": 0}) for p in paths], RandomClipSampler(seconds),
                                      in_order, ApplyTransformToKey("video", UniformTemporalSubsample(16)),
                                      decode_audio=False, decoder="pyav")
    else:
        transform = None if key == "decode" else train_transform(cfg)
        dataset = VideoDataset(rows, RandomClipSampler(seconds), in_order, transform,
                               cfg.DATA.MIN_FRAMES, UniformFrames(CLIP_FRAMES), cfg.DATA.DECODING_THREADS)
        if transform is not None and train_batch:
            return build_train_loader(cfg, dataset=dataset).loader
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=WORKERS.get(key, 0))


def _with_references(keys: List[str]) -> set:
    """``keys`` and the pipelines their ratios refer to, transitively."""
    out, keys = set(), list(keys)
    while keys:
        key = keys.pop()
        if key not in out:
            out.add(key)
            keys.append(PIPELINES[key][2])
    return out


def _clips_in(item) -> int:
    """Clips (or videos) in an item: a collated batch (a tensor of labels), a list of
    samples (the test loader's), or one."""
    if isinstance(item, list) and item and isinstance(item[0], dict):
        return len(item)
    label = item.get("label") if isinstance(item, dict) else None
    return label.numel() if hasattr(label, "numel") else 1


def time_items(items, warmup: int = 1) -> Dict[str, float]:
    """Clips (or videos) per second, and items (batches) per second, after the first
    ``warmup`` items (loader workers starting, first seek)."""
    it = iter(items)
    for _ in range(warmup):
        next(it)
    start, count, batches = time.perf_counter(), 0, 0
    for item in it:
        count += _clips_in(item)
        batches += 1
    seconds = time.perf_counter() - start
    return {"items": count, "batches": batches, "seconds": seconds, "per_s": count / seconds,
            "batches_per_s": batches / seconds}


def run_loading(args) -> List[dict]:
    """Every pipeline once per round, interleaved (in an order rotated every round), each
    round with the same random clips; ratios are taken within a round (a slow stretch of the
    shared machine hits both sides)."""
    import random

    import torch

    import revvideo  # noqa: F401  (first: pytorchvideo's torchvision import fix)

    torch.set_num_threads(1)
    videos = loading_videos(args.videos, args.sizes)
    load_before = os.getloadavg()[0]
    rounds: Dict[tuple, List[dict]] = {}
    keys = [k for k in PIPELINES if k in _with_references(args.pipelines)]
    for r in range(args.rounds):
        for size, paths in videos.items():
            for key in rotated(keys, r):
                label, unit, _, share = PIPELINES[key]
                count = args.test_videos if unit == "videos/s" else args.clips
                batch, warmup = loader_batch(key, args.loader_batch), warmup_items(key)
                count = (warmup + -(-max(3, round(count * share)) // batch)) * batch
                items = [paths[i % len(paths)] for i in range(count)]
                random.seed(r)  # RandomClipSampler: the same clips in every pipeline of a round
                torch.manual_seed(r)
                result = time_items(pipeline_items(key, items, args.loader_batch), warmup)
                rounds.setdefault((size, key), []).append(result)
                print(json.dumps(dict(round=r, size=size, pipeline=key, **result)), flush=True)
    rows = []
    sizes = list(videos)
    for (size, key), results in sorted(rounds.items(),
                                       key=lambda kv: (sizes.index(kv[0][0]), keys.index(kv[0][1]))):
        label, unit, reference, _ = PIPELINES[key]
        ref = rounds[(size, reference)]
        ratios = [a["per_s"] / b["per_s"] for a, b in zip(results, ref)]
        rows.append(dict(size=size, pipeline=key, label=label, unit=unit, reference=reference,
                         workers=WORKERS.get(key, 0), decoding_threads=THREADS.get(key, 1),
                         batch=loader_batch(key, args.loader_batch),
                         per_s=statistics.median(r["per_s"] for r in results),
                         rounds_per_s=[r["per_s"] for r in results],
                         rounds_items=[r["items"] for r in results],
                         ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                         items=sum(r["items"] for r in results), rounds=len(results)))
    for row in rows:
        row["load"] = (load_before, os.getloadavg()[0])
    return rows


# --------------------------------------------------------------------------------- memory
def run_memory_worker(variant: str, batch: int, frames: int, size: int) -> dict:
    import torch

    import backbones

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    _, name, rev_backprop, recompute = MEMORY_VARIANTS[variant]
    model = backbones.build(name, rev_backprop=rev_backprop, recompute_transitions=recompute,
                            input_size=(frames, size, size), head_dropout=0.0)
    model.train()
    x = torch.randn(batch, 3, frames, size, size)
    y = torch.randint(0, model.cfg.num_classes, (batch,))
    params = sum(p.numel() for p in model.parameters())

    def step():
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def measured_step():  # keeps its gradients until the peak is read
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        seconds.append(time.perf_counter() - start)

    step()  # warm-up
    seconds: List[float] = []
    peak_mb = step_peak_mb(measured_step) * 2**20 / MB
    model.zero_grad(set_to_none=True)
    with saved_tensor_meter() as meter:  # exact activation memory of one forward
        model(x)
    saved = meter.total_bytes
    return dict(variant=variant, label=MEMORY_VARIANTS[variant][0], params=params,
                peak_mb=peak_mb, peak_minus_grads_mb=peak_mb - params * 4 / MB,
                saved_mb=saved / MB, step_s=seconds[0])


REPEATED_KEYS = ("peak_mb", "peak_minus_grads_mb", "saved_mb", "step_s")  # medians of --repeats
MEMORY_KEYS = REPEATED_KEYS + ("peak_mmap_mb",)


def _fresh_worker(what: str, variant: str, args, *flags: str, env=None) -> dict:
    """This script's ``what`` benchmark for ``variant`` in a fresh process; its JSON line."""
    return run_fresh(__file__, [what, "--worker", "--variant", variant, "--batch-size", args.batch_size,
                                "--frames", args.frames, "--size", args.size, *flags], env)


def _memory_worker(variant: str, args, env=None) -> dict:
    return _fresh_worker("memory", variant, args, env=env)


def run_memory(args) -> List[dict]:
    rows = []
    for variant in MEMORY_VARIANTS:
        runs = [_memory_worker(variant, args) for _ in range(args.repeats)]
        row = dict(runs[0])
        for key in REPEATED_KEYS:
            row[key] = statistics.median(r[key] for r in runs)
        row["peak_mmap_mb"] = _memory_worker(variant, args, MMAP_MALLOC_ENV)["peak_mb"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next(r for r in rows if r["variant"] == "mvit_b_16x4")
    for r in rows:
        for key in MEMORY_KEYS:
            r[key + "_ratio"] = r[key] / base[key]
    return rows


# --------------------------------------------------------------------------- accumulation
ACCUM_VARIANTS = ("rev_mvit_b_16x4", "mvit_b_16x4")


def run_accum_worker(variant: str, batch: int, accum: int, frames: int, size: int,
                     time_steps: int) -> dict:
    import torch

    import backbones

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    _, name, rev_backprop, recompute = MEMORY_VARIANTS[variant]
    model = backbones.build(name, rev_backprop=rev_backprop, recompute_transitions=recompute,
                            input_size=(frames, size, size), head_dropout=0.0).train()
    x = torch.randn(batch, 3, frames, size, size)
    y = torch.randint(0, model.cfg.num_classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # never stepped

    def forward(clips: range) -> dict:
        return {"loss": torch.nn.functional.cross_entropy(model(x[clips.start:clips.stop]),
                                                          y[clips.start:clips.stop])}

    def step(n: int):
        accumulated_step(model, optimizer, range(batch), n, forward)

    step(accum)  # warm-up
    model.zero_grad(set_to_none=True)  # the measured step allocates its gradients
    peak = step_peak_mb(lambda: step(accum))  # the gradients stay until the peak is read
    with LiveTensorPeak() as live:
        step(accum)
    row = dict(variant=variant, accum=accum, batch=batch, peak_mb=peak * 2**20 / MB,
               live_mb=live.peak_bytes / MB, grad_mb=sum(p.numel() for p in model.parameters()) * 4 / MB)
    if accum > 1 and time_steps:
        row.update(accumulation_times(model, range(batch), accum, forward, time_steps))
    return row


def _accum_worker(variant: str, accum: int, args, time_steps: int = 0, env=None) -> dict:
    return _fresh_worker("accum", variant, args, "--accum", str(accum), "--steps", str(time_steps),
                         env=env)


def run_accum(args) -> List[dict]:
    rows = []
    for variant in ACCUM_VARIANTS:
        for n in (1, args.accum):
            row = _accum_worker(variant, n, args, args.steps if n == args.accum else 0)
            row["peak_mmap_mb"] = _accum_worker(variant, n, args, env=MMAP_MALLOC_ENV)["peak_mb"]
            row["label"] = MEMORY_VARIANTS[variant][0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------------- tables
def loading_table(rows: List[dict]) -> str:
    return markdown_table(
        ["videos", "pipeline", "workers", "batch", "throughput", "ratio (median of rounds)", "to",
         "range"],
        [[r["size"], r["label"], r["workers"], r["batch"], f"{r['per_s']:.2f} {r['unit']}",
          f"{r['ratio']:.2f}x",
          "itself" if r["reference"] == r["pipeline"] else r["reference"],
          f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"] for r in rows])


def memory_table(rows: List[dict], batch: int, frames: int, size: int) -> str:
    keys = ("peak_mb", "peak_minus_grads_mb", "peak_mmap_mb", "saved_mb")
    return markdown_table(
        [f"model (batch {batch}, {frames}x{size}x{size})", "params", "peak MB", "vs MViT-B",
         "peak MB without grads", "vs MViT-B", "peak MB (mmap malloc)", "vs MViT-B",
         "saved tensors MB", "vs MViT-B", "step s"],
        [[r["label"], f"{r['params'] / 1e6:.1f}M"]
         + [cell for k in keys for cell in (f"{r[k]:.0f}", f"{r[k + '_ratio']:.2f}x")]
         + [f"{r['step_s']:.1f}"] for r in rows])


def accum_table(rows: List[dict], batch: int, frames: int, size: int) -> str:
    twin = {r["accum"]: r for r in rows if r["variant"] == "mvit_b_16x4"}
    out = []
    for r in rows:
        t, timed = twin[r["accum"]], "accum_overhead" in r
        out.append([r["label"], r["accum"], batch // r["accum"]]
                   + [cell for k in ("peak_mb", "peak_mmap_mb", "live_mb")
                      for cell in (f"{r[k]:.0f}", f"{r[k] / t[k]:.2f}x")]
                   + ([f"{r['s_direct']:.2f} / {r['s_accum']:.2f} / {r['s_separate']:.2f}",
                       f"{r['accum_overhead'] * 100:+.1f}%", f"{r['accum_vs_separate'] * 100:+.1f}%",
                       f"{r['summing_share'] * 100:+.2f}%"]
                      if timed else ["", "", "", ""]))
    return markdown_table(
        [f"model (batch {batch}, {frames}x{size}x{size})", "ACCUM_ITER", "clips per micro-batch",
         "peak MB", "vs twin", "peak MB (mmap malloc)", "vs twin", "live tensors MB", "vs twin",
         "s per clip (direct / accumulating / separate micro-batches)", "accumulating vs direct",
         "accumulating vs separate", "summing gradients"], out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["loading", "memory", "accum", "all"])
    p.add_argument("--videos", type=int, default=2, help="loading: videos per size and frame rate")
    p.add_argument("--sizes", nargs="+", default=list(LOADING_SIZES), choices=list(LOADING_SIZES))
    p.add_argument("--clips", type=int, default=24, help="loading: clips per pipeline and round")
    p.add_argument("--test-videos", type=int, default=8, help="loading: videos per test pipeline and round")
    p.add_argument("--rounds", type=int, default=3, help="loading: interleaved rounds (median)")
    p.add_argument("--loader-batch", type=int, default=8,
                   help="loading: TRAIN.BATCH_SIZE of the train pipelines' loaders (0: one clip "
                        "or test video at a time, no collation, as measured before)")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES),
                   help="loading: the pipelines to time (their references are timed too)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per model (median)")
    p.add_argument("--accum", type=int, default=4, help="accum: micro-batches per step")
    p.add_argument("--steps", type=int, default=2, help="accum: timing rounds (N=1 and N=accum)")
    p.add_argument("--out", type=Path, default=Path("output/benchmark_video"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=sorted(MEMORY_VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker and args.what == "accum":
        print(json.dumps(run_accum_worker(args.variant, args.batch_size, args.accum, args.frames,
                                          args.size, args.steps)))
        return 0
    if args.worker:
        print(json.dumps(run_memory_worker(args.variant, args.batch_size, args.frames, args.size)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.what in ("loading", "all"):
        rows = results["loading"] = run_loading(args)
        load = rows[0]["load"]
        print(f"\nData loading (PyAV; H.264 {VIDEO_SECONDS} s at 25 and 30 fps; one process, "
              f"torch.set_num_threads(1); {args.rounds} rounds; load average {load[0]:.1f} -> "
              f"{load[1]:.1f}):\n" + loading_table(rows))
    if args.what in ("memory", "all"):
        results["memory"] = run_memory(args)
        print("\nOne training step (forward + cross-entropy + backward):\n"
              + memory_table(results["memory"], args.batch_size, args.frames, args.size))
    if args.what == "accum":
        results["accum"] = run_accum(args)
        print(f"\nOne training step of {args.batch_size} clips, directly and in {args.accum} "
              "micro-batches (gradients included):\n"
              + accum_table(results["accum"], args.batch_size, args.frames, args.size))
    with open(args.out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
