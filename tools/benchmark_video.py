#!/usr/bin/env python
"""Video benchmarks: data loading speed, and training-step memory of Rev-MViT-B 16x4 vs MViT-B.

    python tools/benchmark_video.py loading              # clips/s, PyAV, workers 0 and 2
    python tools/benchmark_video.py memory               # one training step at batch 1, 16x224x224
    python tools/benchmark_video.py accum --batch-size 4 --accum 4 --frames 8
    python tools/benchmark_video.py all --out output/benchmark_video

``loading`` decodes Kinetics-like clips (340x256, 30 fps, 10 s, H.264; generated once with
``revvideo.synthetic`` into the cache) through the real pipelines: the training pipeline
(random 16x4 clip, short side 256-320, crop 224, flip, normalise; with and without
RandAugment) and the test pipeline (the whole video decoded once, 5 clips x 1 crop). It
reports clips/s (training) and videos/s (test) with 0 and 2 DataLoader workers.

``memory`` runs each model in a fresh process (this script with the hidden ``--worker``
flag): build, one warm-up training step, then the measured step (forward, cross-entropy,
backward). It reports the peak resident memory of the measured step above the resident
memory just before it (``/proc/self/clear_refs`` then ``VmHWM``; freed heap returned
with ``malloc_trim`` first), that peak without the fp32 parameter gradients, the same peak
in one more fresh process in which glibc returns every freed block >= 64 KiB at once
(``backbones.memory.MMAP_MALLOC_ENV``: live tensors only, no heap fragmentation; the
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
(``backbones.memory.LiveTensorPeak``). Step time per clip: in the accumulating process,
``--steps`` rounds each timing one step at N=1 and one at N=``--accum`` back to back;
the overhead is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

MB = 1e6
MEMORY_VARIANTS = {  # key -> (label, zoo name, reversible backprop, recompute transitions)
    "rev_mvit_b_16x4": ("Rev-MViT-B 16x4, transitions recomputed (kinetics_revmvit_b_16x4.yaml)",
                        "rev_mvit_b_16x4", True, True),
    "rev_mvit_b_16x4_stored": ("Rev-MViT-B 16x4, transitions stored (as the official model)",
                               "rev_mvit_b_16x4", True, False),
    "rev_mvit_b_16x4_autograd": ("Rev-MViT-B 16x4, plain autograd", "rev_mvit_b_16x4", False, False),
    "mvit_b_16x4": ("MViT-B 16x4 (non-reversible twin)", "mvit_b_16x4", True, False),
}


# -------------------------------------------------------------------------------- loading
def kinetics_like_videos(num: int):
    from revvideo.synthetic import ShapesSpec, ensure_dataset

    spec = ShapesSpec(num_train=num, num_val=0, frames=300, width=340, height=256, fps=30, seed=7)
    return ensure_dataset(spec)


def _loading_cfg(data_dir: Path, workers: int, rand_augment: bool):
    import revvideo

    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(Path(__file__).resolve().parent.parent / "configs" / "kinetics_revmvit_b_16x4.yaml"))
    cfg.merge_from_list(["DATA.PATH_TO_DATA_DIR", str(data_dir), "DATA.TEST_SPLIT", "train",
                         "DATA_LOADER.NUM_WORKERS", workers, "DATA_LOADER.PIN_MEMORY", False,
                         "AUG.ENABLE", rand_augment, "TRAIN.BATCH_SIZE", 4, "TEST.BATCH_SIZE", 1])
    return cfg


def time_loader(loader, items_per_batch, warmup: int = 1) -> Dict[str, float]:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, items = time.perf_counter(), 0
    for batch in it:
        items += items_per_batch(batch)
    seconds = time.perf_counter() - start
    return {"items": items, "seconds": seconds, "per_s": items / seconds if seconds else float("nan")}


def run_loading(args) -> List[dict]:
    import torch

    import revvideo  # noqa: F401  (first: pytorchvideo's torchvision import fix)
    from pytorchvideo.data.clip_sampling import RandomClipSampler
    from pytorchvideo.transforms import ApplyTransformToKey, UniformTemporalSubsample
    from revvideo.data import (VideoDataset, build_test_dataset, build_test_loader,
                               build_train_dataset, clip_duration, read_split)
    from revvideo.transforms import KeepKeys

    torch.set_num_threads(1)
    data_dir = kinetics_like_videos(args.videos)
    rows = []
    for workers in (0, 2):
        cfg = _loading_cfg(data_dir, workers, False)
        decode_only = VideoDataset(read_split(cfg, "train").videos, RandomClipSampler(clip_duration(cfg)),
                                   lambda items: torch.utils.data.RandomSampler(items),
                                   KeepKeys(ApplyTransformToKey("video", UniformTemporalSubsample(16))))
        loader = torch.utils.data.DataLoader(decode_only, batch_size=4, num_workers=workers)
        r = time_loader(loader, lambda b: len(b["label"]))
        rows.append(dict(pipeline="decode only: random 64-frame clip (16x4), 16 frames kept, 340x256",
                         workers=workers, unit="clips/s", **r))
        print(json.dumps(rows[-1]), flush=True)
        for aug in (False, True):
            cfg = _loading_cfg(data_dir, workers, aug)
            dataset = build_train_dataset(cfg)
            loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers)
            r = time_loader(loader, lambda b: len(b["label"]))
            rows.append(dict(pipeline="train: 16x4 clip, scale 256-320, crop 224, flip"
                             + (", RandAugment" if aug else ""), workers=workers, unit="clips/s", **r))
            print(json.dumps(rows[-1]), flush=True)
        cfg = _loading_cfg(data_dir, workers, False)
        loader = build_test_loader(cfg, build_test_dataset(cfg))
        r = time_loader(loader, lambda b: len(b["label"]))
        rows.append(dict(pipeline="test: whole video decoded, 5 clips x 1 crop (224)", workers=workers,
                         unit="videos/s", **r))
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------------- memory
def _release_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def run_memory_worker(variant: str, batch: int, frames: int, size: int) -> dict:
    import torch

    import backbones
    from backbones.memory import proc_status_mb, reset_peak_rss, saved_tensor_meter

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

    step()  # warm-up
    _release_heap()
    rss_before = proc_status_mb("VmRSS")
    reset_peak_rss()
    t0 = time.perf_counter()
    # the measured step keeps its gradients until the peak is read
    out = model(x)
    loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = proc_status_mb("VmHWM")
    model.zero_grad(set_to_none=True)
    del out, loss
    with saved_tensor_meter() as meter:  # exact activation memory of one forward
        out = model(x)
    saved = meter.total_bytes
    peak_mb = (peak - rss_before) * 2**20 / MB
    return dict(variant=variant, label=MEMORY_VARIANTS[variant][0], params=params,
                peak_mb=peak_mb, peak_minus_grads_mb=peak_mb - params * 4 / MB,
                saved_mb=saved / MB, step_s=seconds)


REPEATED_KEYS = ("peak_mb", "peak_minus_grads_mb", "saved_mb", "step_s")  # medians of --repeats
MEMORY_KEYS = REPEATED_KEYS + ("peak_mmap_mb",)


def _memory_worker(variant: str, args, env=None) -> dict:
    cmd = [sys.executable, __file__, "memory", "--worker", "--variant", variant,
           "--batch-size", str(args.batch_size), "--frames", str(args.frames), "--size", str(args.size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_memory(args) -> List[dict]:
    from backbones.memory import MMAP_MALLOC_ENV

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
    from backbones.memory import LiveTensorPeak, proc_status_mb, reset_peak_rss
    from backbones.training import Accumulator

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    _, name, rev_backprop, recompute = MEMORY_VARIANTS[variant]
    model = backbones.build(name, rev_backprop=rev_backprop, recompute_transitions=recompute,
                            input_size=(frames, size, size), head_dropout=0.0).train()
    x = torch.randn(batch, 3, frames, size, size)
    y = torch.randint(0, model.cfg.num_classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # never stepped

    def step(n: int):
        acc = Accumulator(model, optimizer, n)
        model.zero_grad(set_to_none=True)
        acc.backward(acc.split(range(batch)), lambda r: {
            "loss": torch.nn.functional.cross_entropy(model(x[r.start:r.stop]), y[r.start:r.stop])})

    step(accum)  # warm-up
    model.zero_grad(set_to_none=True)  # the measured step allocates its gradients
    _release_heap()
    rss_before = proc_status_mb("VmRSS")
    reset_peak_rss()
    step(accum)  # the gradients stay until the peak is read
    peak = proc_status_mb("VmHWM") - rss_before
    with LiveTensorPeak() as live:
        step(accum)
    times = {1: [], accum: []}
    for _ in range(time_steps):
        for n in times:
            t0 = time.perf_counter()
            step(n)
            times[n].append((time.perf_counter() - t0) / batch)
    return dict(variant=variant, accum=accum, batch=batch, peak_mb=peak * 2**20 / MB,
                live_mb=live.peak_bytes / MB, grad_mb=sum(p.numel() for p in model.parameters()) * 4 / MB,
                step_per_clip_s=times)


def _accum_worker(variant: str, accum: int, args, time_steps: int = 0, env=None) -> dict:
    cmd = [sys.executable, __file__, "accum", "--worker", "--variant", variant,
           "--batch-size", str(args.batch_size), "--accum", str(accum), "--frames", str(args.frames),
           "--size", str(args.size), "--steps", str(time_steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} (accum {accum}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_accum(args) -> List[dict]:
    from backbones.memory import MMAP_MALLOC_ENV

    rows = []
    for variant in ACCUM_VARIANTS:
        for n in (1, args.accum):
            row = _accum_worker(variant, n, args, args.steps if n == args.accum else 0)
            row["peak_mmap_mb"] = _accum_worker(variant, n, args, env=MMAP_MALLOC_ENV)["peak_mb"]
            row["label"] = MEMORY_VARIANTS[variant][0]
            if n == args.accum and args.steps:
                t = row.pop("step_per_clip_s")
                one, acc = t["1"], t[str(n)]
                row["clip_s_direct"], row["clip_s_accum"] = statistics.median(one), statistics.median(acc)
                row["accum_overhead"] = statistics.median(a / b for a, b in zip(acc, one)) - 1
            else:
                row.pop("step_per_clip_s")
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def accum_targets(rows: List[dict], accum: int) -> List[str]:
    by = {(r["variant"], r["accum"]): r for r in rows}
    rev, twin = by[("rev_mvit_b_16x4", accum)], by[("mvit_b_16x4", accum)]
    out = []
    for key, what in (("peak_mb", "resident peak"), ("peak_mmap_mb", "resident peak, mmap malloc"),
                      ("live_mb", "live tensors")):
        ratio = rev[key] / twin[key]
        out.append(f"Rev-MViT-B / MViT-B accumulating ({what}): {ratio:.2f}x "
                   f"(target <= 0.55x: {'met' if ratio <= 0.55 else 'not met'})")
    for r in (rev, twin):
        if "accum_overhead" in r:
            o = r["accum_overhead"]
            out.append(f"{r['label']}: accumulation adds {o * 100:+.1f}% step time per clip "
                       f"(target <= 5%: {'met' if o <= 0.05 else 'not met'})")
    return out


# --------------------------------------------------------------------------------- tables
def loading_table(rows: List[dict]) -> str:
    out = ["| pipeline | workers | throughput | items timed |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['pipeline']} | {r['workers']} | {r['per_s']:.2f} {r['unit']} | {r['items']} |")
    return "\n".join(out)


def memory_table(rows: List[dict], batch: int, frames: int, size: int) -> str:
    out = [f"| model (batch {batch}, {frames}x{size}x{size}) | params | peak MB | vs MViT-B | "
           "peak MB without grads | vs MViT-B | peak MB (mmap malloc) | vs MViT-B | "
           "saved tensors MB | vs MViT-B | step s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['params'] / 1e6:.1f}M | {r['peak_mb']:.0f} | "
                   f"{r['peak_mb_ratio']:.2f}x | {r['peak_minus_grads_mb']:.0f} | "
                   f"{r['peak_minus_grads_mb_ratio']:.2f}x | {r['peak_mmap_mb']:.0f} | "
                   f"{r['peak_mmap_mb_ratio']:.2f}x | {r['saved_mb']:.0f} | "
                   f"{r['saved_mb_ratio']:.2f}x | {r['step_s']:.1f} |")
    return "\n".join(out)


def accum_table(rows: List[dict], batch: int, frames: int, size: int) -> str:
    twin = {r["accum"]: r for r in rows if r["variant"] == "mvit_b_16x4"}
    out = [f"| model (batch {batch}, {frames}x{size}x{size}) | ACCUM_ITER | clips per micro-batch | "
           "peak MB | vs twin | peak MB (mmap malloc) | vs twin | live tensors MB | vs twin | "
           "s per clip | accumulation overhead |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = twin[r["accum"]]
        time = (f"{r['clip_s_direct']:.2f} / {r['clip_s_accum']:.2f} | {r['accum_overhead'] * 100:+.1f}%"
                if "accum_overhead" in r else "| ")
        out.append(f"| {r['label']} | {r['accum']} | {batch // r['accum']} | {r['peak_mb']:.0f} | "
                   f"{r['peak_mb'] / t['peak_mb']:.2f}x | {r['peak_mmap_mb']:.0f} | "
                   f"{r['peak_mmap_mb'] / t['peak_mmap_mb']:.2f}x | {r['live_mb']:.0f} | "
                   f"{r['live_mb'] / t['live_mb']:.2f}x | {time} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["loading", "memory", "accum", "all"])
    p.add_argument("--videos", type=int, default=24, help="videos decoded by the loading benchmark")
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
        results["loading"] = run_loading(args)
        print("\nData loading (PyAV decoding, 340x256 30 fps H.264 clips):\n" + loading_table(results["loading"]))
    if args.what in ("memory", "all"):
        results["memory"] = run_memory(args)
        print("\nOne training step (forward + cross-entropy + backward):\n"
              + memory_table(results["memory"], args.batch_size, args.frames, args.size))
        rev = next(r for r in results["memory"] if r["variant"] == "rev_mvit_b_16x4")
        for key, what in (("peak_mb", "default allocator"), ("peak_mmap_mb", "mmap malloc")):
            ratio = rev[key + "_ratio"]
            print(f"Rev-MViT-B / MViT-B peak memory ({what}): {ratio:.2f}x "
                  f"(target <= 0.5x: {'met' if ratio <= 0.5 else 'not met'})")
    if args.what == "accum":
        results["accum"] = run_accum(args)
        print(f"\nOne training step of {args.batch_size} clips, directly and in {args.accum} "
              "micro-batches (gradients included):\n"
              + accum_table(results["accum"], args.batch_size, args.frames, args.size))
        for line in accum_targets(results["accum"], args.accum):
            print(line)
    with open(args.out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
