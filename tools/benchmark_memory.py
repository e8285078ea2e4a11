#!/usr/bin/env python
"""Training-step memory and speed: Rev-ViT-B vs ViT-B vs ViT-B with activation checkpointing.

    python tools/benchmark_memory.py                      # depths 12 24 48, batch 4, 224x224
    python tools/benchmark_memory.py --quick              # tiny settings (make demo)
    python tools/benchmark_memory.py --depths 12 24 --batch-size 8 --out output/bench

Every (model, depth) runs in a fresh process (this script with the hidden ``--worker`` flag,
which prints one JSON line), so one configuration's allocations cannot inflate another's
peak. Per configuration it measures, on the CPU with 2 threads:

* saved-tensor memory: the bytes of every tensor stored for backward during the forward,
  caught with ``torch.autograd.graph.saved_tensors_hooks`` (``measure.py``; this
  includes what the reversible Function keeps via ``save_for_backward`` and the block
  inputs that non-reentrant checkpointing keeps), each storage counted once, parameters
  excluded;
* the median step time over ``--steps`` steps after one warm-up step, in ``--rounds``
  fresh processes per configuration; at each depth a round runs the three models back to
  back (order rotated between rounds), and the step-time ratios are the medians of the
  per-round ratios, so a slow stretch of a shared machine hits both sides of a ratio;
* step-time ratios again from ``--sweeps`` interleaved sweeps: one more fresh process per
  depth holds all three models and runs one step of each per sweep (order rotated), so
  the steps of a ratio run seconds, not minutes, apart - the tighter pairing;
* peak process memory of one more training step above the RSS just before it
  (``clear_refs`` then ``VmHWM``), also with the fp32 parameter gradients subtracted, and
  again in a second fresh process in which glibc returns every freed block >= 64 KiB to
  the OS at once (with the default allocator the RSS also counts heap fragmentation,
  which grows with depth and blurs the comparison);
* the same two peaks for a step whose parameters already hold gradients, as in every
  micro-batch after the first of a gradient accumulation ("peak accumulating"; above the
  model and its gradients), and that step's exact live-tensor peak
  (``measure.LiveTensorPeak``: activations plus backward's temporaries, no
  allocator effects).

A training step is forward + cross-entropy + backward + ``zero_grad(set_to_none=True)``;
there is no optimizer step (it costs the same for all three models and no extra memory
for plain SGD). Absolute numbers are noisy on a small machine: compare the ratios, which
are measured in the same run. Writes ``results.json`` and ``memory_vs_depth.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from measure import (MMAP_MALLOC_ENV, LiveTensorPeak, checkpoint_layers, fmt,  # noqa: E402
                     markdown_table, paired_ratios, rotated, run_fresh, saved_tensor_meter,
                     step_peak_mb, time_rounds)

MB = 1e6
BASELINE = "vit_b"
VARIANTS = {  # key -> (label, zoo name, checkpoint every block)
    "vit_b": ("ViT-B", "vit_b", False),
    "vit_b_ckpt": ("ViT-B + checkpointing", "vit_b", True),
    "rev_vit_b": ("Rev-ViT-B", "rev_vit_b", False),
}
INTERLEAVED_PAIRS = [("rev_vit_b", "vit_b_ckpt"), ("rev_vit_b", "vit_b"), ("vit_b_ckpt", "vit_b")]


# --------------------------------------------------------------------------- worker side
def _training_step(variant: str, depth: int, batch_size: int, img_size: int):
    """Build ``variant`` at ``depth`` and return ``(step, params)``; ``step(measure_saved)``
    runs one training step and, if asked, meters what the forward saves for backward."""
    import torch
    import torch.nn.functional as F

    import backbones

    _, zoo_name, use_checkpoint = VARIANTS[variant]
    model = backbones.build(zoo_name, rev_backprop=True, depth=depth,
                            input_size=(img_size, img_size)).train()
    if use_checkpoint:
        checkpoint_layers(model, lambda layer: True)  # every block, non-reentrant
    params = [p for p in model.parameters() if p.requires_grad]
    images = torch.randn(batch_size, 3, img_size, img_size)
    labels = torch.randint(0, model.cfg.num_classes, (batch_size,))

    def step(measure_saved: bool = False, accumulate: bool = False):
        # Only the forward is metered: the reversible backward saves tensors transiently
        # while it recomputes each block, and those are not kept activations.
        meter = saved_tensor_meter(exclude=params) if measure_saved else contextlib.nullcontext()
        with meter as saved:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        if not accumulate:
            model.zero_grad(set_to_none=True)
        return saved

    return step, params


def _mb(mib: Optional[float]) -> Optional[float]:
    """MiB (what ``step_peak_mb`` reads from /proc) in this script's MB (1e6 bytes)."""
    return None if mib is None else mib * 2**20 / MB


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def run_worker(variant: str, depth: int, batch_size: int, img_size: int, steps: int) -> dict:
    """Measure one configuration in this (fresh) process; ``steps=0`` measures memory only."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    step, params = _training_step(variant, depth, batch_size, img_size)
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    saved_bytes = step(measure_saved=True).total_bytes  # the warm-up step
    times = [_timed(step) for _ in range(steps)]
    peak = _mb(step_peak_mb(step))
    for p in params:  # as after the first micro-batch of an accumulation
        p.grad = torch.zeros_like(p)
    accum_peak = _mb(step_peak_mb(lambda: step(accumulate=True)))
    with LiveTensorPeak() as live:
        step(accumulate=True)

    return {
        "variant": variant, "label": VARIANTS[variant][0], "depth": depth,
        "params_m": sum(p.numel() for p in params) / 1e6,
        "saved_mb": saved_bytes / MB,
        "grad_mb": grad_bytes / MB,
        "peak_mb": peak,
        "peak_above_grads_mb": None if peak is None else peak - grad_bytes / MB,
        "peak_accum_mb": accum_peak,
        "live_accum_mb": live.peak_bytes / MB,
        "step_s": statistics.median(times) if times else None,
        "step_times_s": times,
    }


def run_interleaved_worker(depth: int, batch_size: int, img_size: int, sweeps: int) -> dict:
    """Time all models in this one process, one step each per sweep, in an order rotated
    every sweep: steps of a sweep run seconds apart, so the machine's slow and fast
    stretches hit every model alike and per-sweep ratios are tightly paired."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    steps = {v: _training_step(v, depth, batch_size, img_size)[0] for v in VARIANTS}
    for step in steps.values():
        step()  # warm-up
    times = time_rounds(lambda v: steps[v](), list(VARIANTS), sweeps)
    return {"depth": depth, "step_times_s": times}


# --------------------------------------------------------------------------- driver side
def _worker_json(flags: List[object], env=None) -> dict:
    """This script as a fresh worker process with ``flags``: its JSON line, or
    ``{"error": ...}`` with the tail of its output."""
    try:
        return run_fresh(__file__, ["--worker", *flags], env)
    except RuntimeError as e:
        return {"error": str(e)}


def _run_worker_process(variant: str, depth: int, args, steps: int, env=None) -> dict:
    r = _worker_json(["--variant", variant, "--depth", depth, "--batch-size", args.batch_size,
                      "--img-size", args.img_size, "--steps", steps], env)
    if "error" in r:
        r.update(variant=variant, label=VARIANTS[variant][0], depth=depth)
    return r


def run_interleaved(depth: int, args) -> dict:
    """Interleaved timing at ``depth`` (``run_interleaved_worker``) with its paired ratios."""
    r = _worker_json(["--interleaved", "--depth", depth, "--batch-size", args.batch_size,
                      "--img-size", args.img_size, "--steps", args.sweeps])
    if "error" not in r:
        r["ratios"] = {f"{a}/{b}": paired_ratios(r["step_times_s"][a], r["step_times_s"][b])
                       for a, b in INTERLEAVED_PAIRS}
    return {"depth": depth, **r}


def run_config(variant: str, depth: int, args) -> dict:
    """One configuration: a fresh process with the default allocator (time, saved tensors,
    peak), then a fresh memory-only process with large blocks always mmapped (peak)."""
    r = _run_worker_process(variant, depth, args, args.steps)
    if "error" not in r:
        m = _run_worker_process(variant, depth, args, 0, MMAP_MALLOC_ENV)
        r["peak_mmap_mb"] = m.get("peak_mb")
        r["peak_mmap_above_grads_mb"] = m.get("peak_above_grads_mb")
        r["peak_accum_mmap_mb"] = m.get("peak_accum_mb")
    return r


def merge_rounds(rounds: List[dict]) -> dict:
    """One row from a configuration's timing rounds: memory from the first round, step time
    the median of the rounds' medians (each round's kept in ``step_rounds_s``)."""
    row = dict(rounds[0])
    if "error" not in row:
        row["step_rounds_s"] = [r["step_s"] for r in rounds]
        row["step_s"] = statistics.median(row["step_rounds_s"])
    return row


def round_ratios(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """``paired_ratios`` of two rows' rounds: ``a``'s step time / ``b``'s in the same round;
    the two ran back to back, so a slow stretch of the shared machine hits both."""
    return paired_ratios(a["step_rounds_s"], b["step_rounds_s"]) if a and b else None


def paired_ratio(a: Optional[dict], b: Optional[dict]) -> Optional[float]:
    """Median over rounds of ``a``'s step time / ``b``'s (``round_ratios``)."""
    q = round_ratios(a, b)
    return q and q["median"]


def add_ratios(results: List[dict]) -> None:
    """Ratios within this run: vs ViT-B at the same depth, and vs the model's smallest depth."""
    ok = [r for r in results if "error" not in r]
    base = {r["depth"]: r for r in ok if r["variant"] == BASELINE}
    smallest = {}
    for r in sorted(ok, key=lambda r: r["depth"]):
        smallest.setdefault(r["variant"], r)
    for r in ok:
        b, s = base.get(r["depth"]), smallest[r["variant"]]
        r["step_vs_vit_b"] = paired_ratio(r, b)
        r["saved_vs_vit_b"] = r["saved_mb"] / b["saved_mb"] if b else None
        r["saved_vs_smallest_depth"] = r["saved_mb"] / s["saved_mb"]


def print_table(results: List[dict]) -> None:
    headers = ["model", "depth", "params M", "step s", "step vs ViT-B", "saved MB",
               "saved vs ViT-B", "saved vs min depth", "peak MB", "peak-grads MB",
               "peak-grads MB (mmap)", "peak accumulating MB (mmap)", "live accumulating MB"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["label"], r["depth"], "failed: " + r["error"][:60]] + [""] * 10)
            continue
        rows.append([r["label"], r["depth"], fmt(r["params_m"], ".1f"), fmt(r["step_s"], ".2f"),
                     fmt(r["step_vs_vit_b"], ".2f"), fmt(r["saved_mb"], ".1f"),
                     fmt(r["saved_vs_vit_b"], ".3f"), fmt(r["saved_vs_smallest_depth"], ".2f"),
                     fmt(r["peak_mb"], ".0f"), fmt(r["peak_above_grads_mb"], ".0f"),
                     fmt(r.get("peak_mmap_above_grads_mb"), ".0f"),
                     fmt(r.get("peak_accum_mmap_mb"), ".0f"), fmt(r.get("live_accum_mb"), ".0f")])
    print(markdown_table(headers, rows))


def print_interleaved_table(interleaved: List[dict]) -> None:
    labels = {k: label for k, (label, _, _) in VARIANTS.items()}
    headers = ["depth", "sweeps"] + [f"{labels[a]} / {labels[b]}" for a, b in INTERLEAVED_PAIRS]
    rows = []
    for r in interleaved:
        if "error" in r:
            rows.append([r["depth"], "failed: " + r["error"][:60]] + [""] * len(INTERLEAVED_PAIRS))
            continue
        cells = []
        for a, b in INTERLEAVED_PAIRS:
            q = r["ratios"][f"{a}/{b}"]
            cells.append(f"{q['median']:.3f} ({q['min']:.2f}-{q['max']:.2f}; "
                         f"faster {q['faster']}/{q['sweeps']})")
        rows.append([r["depth"], len(r["step_times_s"][BASELINE])] + cells)
    print("\nstep-time ratios from interleaved sweeps: median (range; sweeps in which the first "
          "was faster)")
    print(markdown_table(headers, rows))


def plot(results: List[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping the plot")
        return False
    panels = [("saved_mb", "saved tensors (MB, log)", True),
              ("peak_mmap_above_grads_mb", "step peak - grads, mmap malloc (MB)", False),
              ("peak_accum_mmap_mb", "peak accumulating, mmap malloc (MB)", False),
              ("step_s", "step time (s)", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.2))
    for ax, (key, title, log) in zip(axes, panels):
        for variant, (label, _, _) in VARIANTS.items():
            pts = sorted((r["depth"], r[key]) for r in results
                         if r["variant"] == variant and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("depth (blocks)")
        ax.set_xticks(sorted({r["depth"] for r in results}))
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[-1].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[12, 24, 48])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--rounds", type=int, default=3,
                   help="timing rounds per depth: each runs every model in a fresh process, "
                        "back to back in a rotated order; step ratios are paired per round")
    p.add_argument("--sweeps", type=int, default=8,
                   help="interleaved timing per depth: one more fresh process holds all three "
                        "models and runs this many sweeps of one step each (0: skip)")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for smoke tests: depths 2 4, 112x112, batch 2, 2 steps, 1 round, "
                        "2 sweeps")
    p.add_argument("--out", type=Path, default=Path("output/benchmark_memory"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    p.add_argument("--interleaved", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        r = (run_interleaved_worker(args.depth, args.batch_size, args.img_size, args.steps)
             if args.interleaved else
             run_worker(args.variant, args.depth, args.batch_size, args.img_size, args.steps))
        print(json.dumps(r), flush=True)
        return 0
    if args.quick:
        args.depths, args.img_size, args.batch_size = [2, 4], 112, 2
        args.steps, args.rounds, args.sweeps = 2, 1, 2
    if min(args.depths) < 1 or min(args.batch_size, args.steps, args.rounds) < 1 or args.sweeps < 0:
        p.error("depths, --batch-size, --steps and --rounds must be positive, --sweeps >= 0")
    depths = sorted(set(args.depths))

    print(f"batch {args.batch_size}, {args.img_size}x{args.img_size}, depths {depths}, "
          f"median of {args.steps} steps after 1 warm-up, {args.rounds} round(s), 2 threads, "
          "one process per measurement")
    variants = list(VARIANTS)
    runs = {(v, d): [] for d in depths for v in variants}
    interleaved: List[dict] = []
    total, done, start = len(runs) * args.rounds, 0, time.time()
    for depth in depths:
        for rnd in range(args.rounds):
            for variant in rotated(variants, rnd):
                t0 = time.time()
                # memory once (first round); later rounds only time
                r = (run_config(variant, depth, args) if rnd == 0 else
                     _run_worker_process(variant, depth, args, args.steps))
                r["load_avg_1min"] = os.getloadavg()[0]  # our 2 threads count too
                runs[(variant, depth)].append(r)
                done += 1
                status = r["error"] if "error" in r else f"{r['step_s']:.2f} s/step"
                print(f"[{done}/{total}] {VARIANTS[variant][0]:<22} depth {depth:<3} round {rnd + 1} "
                      f"{status} ({time.time() - t0:.0f} s, total {time.time() - start:.0f} s)",
                      flush=True)
        if args.sweeps:
            t0 = time.time()
            interleaved.append(run_interleaved(depth, args))
            print(f"[interleaved] depth {depth:<3} {args.sweeps} sweeps "
                  f"({time.time() - t0:.0f} s, total {time.time() - start:.0f} s)", flush=True)
    results = []
    for (variant, depth), rounds in runs.items():
        failed = [r for r in rounds if "error" in r]
        results.append(failed[0] if failed else merge_rounds(rounds))
        results[-1]["load_avg_1min"] = max(r["load_avg_1min"] for r in rounds)

    add_ratios(results)
    print()
    print_table(results)
    if interleaved:
        print_interleaved_table(interleaved)
    print("\nstep: forward + cross-entropy + backward + zero_grad, no optimizer step (median\n"
          "of the rounds' medians); step vs ViT-B: median of the per-round ratios.\n"
          "saved: tensors kept for backward during the forward, parameters excluded.\n"
          "peak: VmHWM - VmRSS before one step; -grads: minus the fp32 parameter gradients;\n"
          "(mmap): in another fresh process with MALLOC_MMAP_THRESHOLD_=65536, i.e. without\n"
          "the fragmentation that glibc's default heap adds to the RSS.\n"
          "accumulating: a step whose parameters already hold gradients (every micro-batch\n"
          "after the first); peak above the model and its gradients; live: the exact peak of\n"
          "tensor storages allocated during the step (LiveTensorPeak).")
    busiest = max(r["load_avg_1min"] for r in results)
    if busiest > (os.cpu_count() or 2) + 0.5:
        print(f"\nwarning: other processes competed for the CPU (1-min load average up to "
              f"{busiest:.1f} on {os.cpu_count()} cores); step times are noisier than usual.")

    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"depths": depths, "batch_size": args.batch_size, "img_size": args.img_size,
                "steps": args.steps, "rounds": args.rounds, "sweeps": args.sweeps, "warmup_steps": 1,
                "threads": 2, "quick": args.quick,
                "optimizer": "none (zero_grad(set_to_none=True) only)"}
    with contextlib.suppress(ImportError):
        import torch
        settings["torch"] = torch.__version__
    with open(args.out / "results.json", "w") as f:
        json.dump({"settings": settings, "results": results, "interleaved": interleaved}, f,
                  indent=2)
    print(f"\nwrote {args.out / 'results.json'}")
    if plot(results, args.out / "memory_vs_depth.png"):
        print(f"wrote {args.out / 'memory_vs_depth.png'}")
    return 1 if any("error" in r for r in results + interleaved) else 0


if __name__ == "__main__":
    sys.exit(main())
