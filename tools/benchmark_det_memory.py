#!/usr/bin/env python
"""Training memory of Mask R-CNN with reversible backbones vs their non-reversible twins.

One Mask R-CNN + pyramid training iteration (forward + backward) at the same image size
for Rev-MViT-B vs MViT-B (Detectron2 FPN) and Rev-ViT-B vs ViT-B (simple feature
pyramid), each measured in a fresh process (as in the README's "Memory and speed"):

* ``peak MB``: the process's resident high-water mark during its first training step
  minus its resident memory just before it (``/proc/self/clear_refs`` reset, ``VmHWM``),
  less the fp32 parameter gradients that step allocates: the step's working memory;
  on CUDA, ``torch.cuda.max_memory_allocated`` above the allocation before the step;
* ``peak MB (mmap malloc)`` (CPU): the same in one more fresh process in which glibc
  returns every freed block >= 64 KiB at once (``measure.MMAP_MALLOC_ENV``), so
  it counts live tensors and not retained heap;
* ``saved MB``: the activation bytes autograd keeps for backward (each storage counted
  once, parameters excluded), for the whole detector and for the backbone trunk alone
  -- exact and noise-free;
* ``step s``: median wall time of ``--steps`` further steps.

    python tools/benchmark_det_memory.py                      # 640x640, batch 1, 3 steps
    python tools/benchmark_det_memory.py --size 800 --batch 2 --steps 2
    python tools/benchmark_det_memory.py --variants rev_mvit_b mvit_b --device cuda
    python tools/benchmark_det_memory.py --accum 4 --batch 4 --size 512 --steps 1

``--accum N`` compares instead a batch of ``--batch`` images reached directly
(``SOLVER.ACCUM_ITER`` 1) with the same batch reached by accumulating N micro-batches
(``revdet.engine.AccumTrainer``'s ``backbones.training.Accumulator``), for Rev-MViT-B and
its twin (``--variants`` to change): the first step's resident peak above the RSS before
it, gradients included, in fresh processes with the default allocator and with mmap malloc,
and its exact live-tensor peak (``measure.LiveTensorPeak``, in another step); step time
per image from ``--steps`` rounds in the accumulating process, each timing the batch at
once, accumulated, and as separate micro-batch steps, and the CPU time that summing the
gradients takes as a share of the direct step (``measure.accumulation_times``).

Prints a markdown table; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from measure import (MMAP_MALLOC_ENV, LiveTensorPeak, SavedTensorMeter,  # noqa: E402
                     accumulated_step, accumulation_times, fmt, markdown_table, run_fresh,
                     step_peak_mb)

# variant -> (registered backbone, zoo architecture, its twin); each starts from the COCO
# config of its family (coco_revmvit.yaml recomputes the stage transitions).
VARIANTS = {
    "rev_mvit_b": ("build_rev_mvit_fpn_backbone", "mvit_b", "mvit_b"),
    "rev_mvit_b_stored": ("build_rev_mvit_fpn_backbone", "mvit_b", "mvit_b"),
    "mvit_b": ("build_mvit_fpn_backbone", "mvit_b", None),
    "rev_vit_b": ("build_rev_vit_simple_fpn_backbone", "vit_b", "vit_b"),
    "vit_b": ("build_vit_simple_fpn_backbone", "vit_b", None),
}
LABELS = {"rev_mvit_b": "Rev-MViT-B + FPN (transitions recomputed, coco_revmvit.yaml)",
          "rev_mvit_b_stored": "Rev-MViT-B + FPN (transitions stored, as the official model)",
          "mvit_b": "Rev-MViT-B's non-reversible twin + FPN",
          "rev_vit_b": "Rev-ViT-B + simple pyramid", "vit_b": "ViT-B (Rev-ViT-B's twin) + simple pyramid"}


# ---------------------------------------------------------------------- worker side
def _build(variant: str, device: str):
    import revdet
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    backbone, arch, _ = VARIANTS[variant]
    cfg = revdet.add_revdet_config(get_cfg())
    name = "coco_revvit_b.yaml" if "vit_b" in variant and "mvit" not in variant else "coco_revmvit.yaml"
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", backbone, "MODEL.ARCH", arch,
                         "MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    if variant.endswith("_stored"):
        cfg.merge_from_list(["MODEL.RECOMPUTE_TRANSITIONS", False])
    return build_model(cfg).train()


def _batch(size: int, batch: int, device: str, seed: int = 0):
    import torch
    from detectron2.structures import Boxes, Instances, PolygonMasks

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        inst = Instances((size, size))
        n = 8
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = torch.rand(n, 2, generator=g) * size * 0.25 + size * 0.05
        boxes = torch.cat([xy, xy + wh], dim=1)
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, 80, (n,), generator=g)
        inst.gt_masks = PolygonMasks([[[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]]
                                      for b in boxes.tolist()])
        image = (torch.rand(3, size, size, generator=g) * 255).to(device)
        out.append({"image": image, "instances": inst, "height": size, "width": size})
    return out


def worker(args) -> dict:
    import torch
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    device = args.device
    model = _build(args.variant, device)
    trunk = model.backbone.bottom_up if hasattr(model.backbone, "bottom_up") else model.backbone.net
    params = sum(p.numel() for p in trunk.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    batch = _batch(args.size, args.batch, device)
    cuda = device.startswith("cuda")

    def step(measure_saved: bool, update: bool = True):
        # Hooks nest (the innermost one packs), so the trunk's tensors go to its meter
        # only; the shared `seen` set counts a storage saved in both parts once.
        saved_rest = SavedTensorMeter(exclude=model.parameters())
        saved_trunk = SavedTensorMeter(exclude=model.parameters(), seen=saved_rest.seen)
        trunk_hooks = saved_trunk.hooks()
        handles = []
        if measure_saved:
            handles = [trunk.register_forward_pre_hook(lambda *a: trunk_hooks.__enter__()),
                       trunk.register_forward_hook(lambda *a: trunk_hooks.__exit__(None, None, None))]
        with EventStorage(0):
            if measure_saved:
                with saved_rest.hooks():
                    losses = model(batch)
            else:
                losses = model(batch)
            sum(losses.values()).backward()
        for h in handles:
            h.remove()
        if update:
            opt.step()
        opt.zero_grad(set_to_none=False)
        return ((saved_rest.total_bytes + saved_trunk.total_bytes) / 2**20,
                saved_trunk.total_bytes / 2**20)

    # Peak: the first step, in a process that has only built the model and the batch.
    # (A later step would start from an RSS that still holds the memory the previous step
    # freed but the allocator kept, and so understate the peak.) The parameter gradients
    # this first backward allocates are subtracted: they are not activation memory.
    grad_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(False, update=False)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 - grad_mb
    else:
        peak = step_peak_mb(lambda: step(False, update=False)) - grad_mb
    if args.peak_only:
        return {"variant": args.variant, "peak_mb": peak}
    saved = step(True)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step(False)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"variant": args.variant, "size": args.size, "batch": args.batch,
            "trunk_params_M": params / 1e6, "peak_mb": peak,
            "step_s": statistics.median(times), "saved_mb": saved[0], "saved_trunk_mb": saved[1],
            "threads": torch.get_num_threads()}


def accum_worker(args) -> dict:
    """The accumulation comparison in this (fresh) process: one step of ``args.batch``
    images in ``args.accum`` micro-batches (zero_grad, then forward + backward of each)."""
    import torch
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = _build(args.variant, args.device)
    batch = _batch(args.size, args.batch, args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # never stepped

    def step(n: int):
        with EventStorage(0):
            accumulated_step(model, optimizer, batch, n, model)

    peak = step_peak_mb(lambda: step(args.accum))  # the first step: see worker()
    if args.peak_only:
        return {"variant": args.variant, "peak_mb": peak}
    with LiveTensorPeak() as live:
        step(args.accum)
    row = {"variant": args.variant, "accum": args.accum, "size": args.size, "batch": args.batch,
           "peak_mb": peak, "live_mb": live.peak_bytes / 2**20}
    if args.accum > 1 and args.steps:
        with EventStorage(0):
            row.update(accumulation_times(model, batch, args.accum, model, args.steps))
    return row


def accum_table(rows) -> str:
    twin = {r["accum"]: r for r in rows if VARIANTS[r["variant"]][2] is None}
    r0 = rows[0]
    headers = [f"backbone (Mask R-CNN, {r0['size']}x{r0['size']}, batch {r0['batch']})",
               "ACCUM_ITER", "images per micro-batch", "peak MB", "vs twin",
               "peak MB (mmap malloc)", "vs twin", "live tensors MB", "vs twin",
               "s per image (direct / accumulating / separate micro-batches)",
               "accumulating vs direct", "accumulating vs separate", "summing gradients"]
    out = []
    for r in rows:
        t = twin[r["accum"]]
        timed = "accum_overhead" in r
        out.append([LABELS[r["variant"]], r["accum"], r["batch"] // r["accum"]]
                   + [cell for key in ("peak_mb", "peak_mmap_mb", "live_mb")
                      for cell in (fmt(r[key], ".0f"),
                                   fmt(r[key] / t[key] if r[key] and t[key] else None, ".2f", "x"))]
                   + [f"{r['s_direct']:.2f} / {r['s_accum']:.2f} / {r['s_separate']:.2f}" if timed else "",
                      fmt(r["accum_overhead"] * 100 if timed else None, "+.1f", "%"),
                      fmt(r["accum_vs_separate"] * 100 if timed else None, "+.1f", "%"),
                      fmt(r["summing_share"] * 100 if timed else None, "+.2f", "%")])
    return markdown_table(headers, out)


# ---------------------------------------------------------------------- driver side
def table(rows) -> str:
    by = {r["variant"]: r for r in rows}
    headers = [f"backbone (Mask R-CNN, {rows[0]['size']}x{rows[0]['size']}, batch {rows[0]['batch']})",
               "step s", "peak MB", "vs twin", "peak MB (mmap malloc)", "vs twin",
               "saved MB (detector)", "saved MB (trunk)", "trunk vs twin"]

    def vs_twin(r, key):
        twin = VARIANTS[r["variant"]][2]
        t = by.get(twin) if twin else None
        if r.get(key) is None or (twin and (not t or t.get(key) is None)):
            return "-"
        return f"{r[key] / t[key]:.2f}x" if t else "1.00x"

    out = [[LABELS[r["variant"]], fmt(r["step_s"], ".1f"), fmt(r["peak_mb"], ".0f"),
            vs_twin(r, "peak_mb"), fmt(r.get("peak_mmap_mb"), ".0f"), vs_twin(r, "peak_mmap_mb"),
            fmt(r["saved_mb"], ".0f"), fmt(r["saved_trunk_mb"], ".0f"), vs_twin(r, "saved_trunk_mb")]
           for r in rows]
    return markdown_table(headers, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--size", type=int, default=640, help="square image side (multiple of 32)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--worker", dest="variant", help=argparse.SUPPRESS)
    p.add_argument("--peak-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--accum", type=int, default=0,
                   help="compare N=1 with N micro-batches of --batch images (see above)")
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(accum_worker(args) if args.accum else worker(args)), flush=True)
        return
    if args.accum and args.batch % args.accum:
        p.error(f"--accum {args.accum} does not divide --batch {args.batch}")

    def run(v, *extra, env=None, accum=0):
        try:
            return run_fresh(__file__, ["--worker", v, "--size", args.size, "--batch", args.batch,
                                        "--steps", 0 if accum == 1 else args.steps,
                                        "--device", args.device, "--accum", accum, *extra], env)
        except RuntimeError as e:
            sys.exit(f"{v} failed: {e}")

    if args.accum:
        variants = args.variants if args.variants != list(VARIANTS) else ["rev_mvit_b", "mvit_b"]
        rows = []
        for v in variants:
            for n in (1, args.accum):
                print(f"measuring {LABELS[v]}, {n} micro-batch(es) ...", file=sys.stderr, flush=True)
                rows.append(run(v, accum=n))
                rows[-1]["peak_mmap_mb"] = (run(v, "--peak-only", env=MMAP_MALLOC_ENV, accum=n)["peak_mb"]
                                            if args.device == "cpu" else None)
        print(accum_table(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return

    rows = []
    for v in args.variants:
        print(f"measuring {LABELS[v]} ...", file=sys.stderr, flush=True)
        rows.append(run(v))
        r = rows[-1]
        if args.device == "cpu":
            r["peak_mmap_mb"] = run(v, "--peak-only", env=MMAP_MALLOC_ENV)["peak_mb"]
        print(f"  step {r['step_s']:.1f} s, peak {r['peak_mb']:.0f} MB, saved {r['saved_mb']:.0f} MB "
              f"(trunk {r['saved_trunk_mb']:.0f} MB)", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
