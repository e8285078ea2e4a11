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
  returns every freed block >= 64 KiB at once (``backbones.memory.MMAP_MALLOC_ENV``), so
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
MViT-B (``--variants`` to change): the first step's resident peak above the RSS before it,
gradients included, in fresh processes with the default allocator and with mmap malloc,
and its exact live-tensor peak (``backbones.memory.LiveTensorPeak``, in another step);
step time per image from ``--steps`` rounds that each time one step at N=1 and one at N
back to back in the accumulating process (overhead: median of the per-round ratios).

Prints a markdown table; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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
          "mvit_b": "MViT-B + FPN",
          "rev_vit_b": "Rev-ViT-B + simple pyramid", "vit_b": "ViT-B + simple pyramid"}


# ---------------------------------------------------------------------- worker side
def _build(variant: str, device: str):
    import revdet
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    backbone, arch, _ = VARIANTS[variant]
    cfg = revdet.add_revdet_config(get_cfg())
    name = "coco_revvit_b.yaml" if "vit_b" in variant and "mvit" not in variant else "coco_revmvit.yaml"
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", backbone, "MODEL.REVDET.ARCH", arch,
                         "MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    if variant.endswith("_stored"):
        cfg.merge_from_list(["MODEL.REVDET.RECOMPUTE_TRANSITIONS", False])
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


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024


class SavedBytes:
    """Bytes of the activations autograd saves for backward, each storage counted once
    (parameters, which backward also holds on to, are not counted: ``exclude``)."""

    def __init__(self, seen=None, exclude=()):
        import torch

        self.seen = set(exclude) if seen is None else seen
        self.bytes = 0
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def pack(self, t):
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
        except (RuntimeError, NotImplementedError):
            return t
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += key[1]
        return t


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
    param_storages = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes())
                      for p in model.parameters()}

    def step(measure_saved: bool, update: bool = True):
        # Hooks nest (the innermost one packs), so the trunk's tensors go to saved_trunk
        # only; a shared `seen` set counts a storage saved in both parts once.
        saved_all = SavedBytes(exclude=param_storages)
        saved_trunk = SavedBytes(saved_all.seen)
        handles = []
        if measure_saved:
            handles = [trunk.register_forward_pre_hook(lambda *a: saved_trunk.ctx.__enter__()),
                       trunk.register_forward_hook(lambda *a: saved_trunk.ctx.__exit__(None, None, None))]
        with EventStorage(0):
            if measure_saved:
                with saved_all.ctx:
                    losses = model(batch)
            else:
                losses = model(batch)
            sum(losses.values()).backward()
        for h in handles:
            h.remove()
        if update:
            opt.step()
        opt.zero_grad(set_to_none=False)
        return (saved_all.bytes + saved_trunk.bytes) / 2**20, saved_trunk.bytes / 2**20

    # Peak: the first step, in a process that has only built the model and the batch.
    # (A later step would start from an RSS that still holds the memory the previous step
    # freed but the allocator kept, and so understate the peak.) The parameter gradients
    # this first backward allocates are subtracted: they are not activation memory.
    grad_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mb()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    step(False, update=False)
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 - grad_mb
    else:
        peak = _hwm_mb() - base - grad_mb
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

    from backbones.memory import LiveTensorPeak
    from backbones.training import Accumulator

    torch.manual_seed(0)
    model = _build(args.variant, args.device)
    batch = _batch(args.size, args.batch, args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # never stepped

    def step(n: int):
        acc = Accumulator(model, optimizer, n)
        model.zero_grad(set_to_none=True)
        with EventStorage(0):
            acc.backward(acc.split(batch), model)

    base = _rss_mb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step(args.accum)  # the first step: see worker()
    peak = _hwm_mb() - base
    if args.peak_only:
        return {"variant": args.variant, "peak_mb": peak}
    with LiveTensorPeak() as live:
        step(args.accum)
    times = {1: [], args.accum: []}
    for _ in range(args.steps):
        for n in times:
            t = time.perf_counter()
            step(n)
            times[n].append((time.perf_counter() - t) / args.batch)
    row = {"variant": args.variant, "accum": args.accum, "size": args.size, "batch": args.batch,
           "peak_mb": peak, "live_mb": live.peak_bytes / 2**20}
    if args.accum > 1 and args.steps:
        row["image_s_direct"] = statistics.median(times[1])
        row["image_s_accum"] = statistics.median(times[args.accum])
        row["accum_overhead"] = statistics.median(
            a / b for a, b in zip(times[args.accum], times[1])) - 1
    return row


def accum_table(rows) -> str:
    twin = {r["accum"]: r for r in rows if VARIANTS[r["variant"]][2] is None}
    r0 = rows[0]
    out = [f"| backbone (Mask R-CNN, {r0['size']}x{r0['size']}, batch {r0['batch']}) | ACCUM_ITER | "
           "images per micro-batch | peak MB | vs twin | peak MB (mmap malloc) | vs twin | "
           "live tensors MB | vs twin | s per image (direct / accumulating) | accumulation overhead |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = twin[r["accum"]]
        time_cols = (f"{r['image_s_direct']:.2f} / {r['image_s_accum']:.2f} | "
                     f"{r['accum_overhead'] * 100:+.1f}%" if "accum_overhead" in r else " | ")
        out.append(f"| {LABELS[r['variant']]} | {r['accum']} | {r['batch'] // r['accum']} | "
                   f"{r['peak_mb']:.0f} | {r['peak_mb'] / t['peak_mb']:.2f}x | "
                   f"{r['peak_mmap_mb']:.0f} | {r['peak_mmap_mb'] / t['peak_mmap_mb']:.2f}x | "
                   f"{r['live_mb']:.0f} | {r['live_mb'] / t['live_mb']:.2f}x | {time_cols} |")
    return "\n".join(out)


def accum_targets(rows, accum: int):
    out = []
    by = {(r["variant"], r["accum"]): r for r in rows}
    for r in rows:
        twin = VARIANTS[r["variant"]][2]
        if r["accum"] == accum and twin and (twin, accum) in by:
            for key, what in (("peak_mb", "resident peak"), ("peak_mmap_mb", "mmap malloc"),
                              ("live_mb", "live tensors")):
                ratio = r[key] / by[(twin, accum)][key]
                out.append(f"{LABELS[r['variant']]} / twin, accumulating ({what}): {ratio:.2f}x "
                           f"(target <= 0.55x: {'met' if ratio <= 0.55 else 'not met'})")
        if "accum_overhead" in r:
            o = r["accum_overhead"]
            out.append(f"{LABELS[r['variant']]}: accumulation adds {o * 100:+.1f}% step time per "
                       f"image (target <= 5%: {'met' if o <= 0.05 else 'not met'})")
    return out


# ---------------------------------------------------------------------- driver side
def table(rows) -> str:
    by = {r["variant"]: r for r in rows}
    out = ["| backbone (Mask R-CNN, {}x{}, batch {}) | step s | peak MB | vs twin | peak MB "
           "(mmap malloc) | vs twin | saved MB (detector) | saved MB (trunk) | trunk vs twin |"
           .format(rows[0]["size"], rows[0]["size"], rows[0]["batch"]),
           "|---|---|---|---|---|---|---|---|---|"]

    def vs_twin(r, key):
        twin = VARIANTS[r["variant"]][2]
        t = by.get(twin) if twin else None
        if r.get(key) is None or (twin and (not t or t.get(key) is None)):
            return "-"
        return f"{r[key] / t[key]:.2f}x" if t else "1.00x"

    for r in rows:
        mmap = "-" if r.get("peak_mmap_mb") is None else f"{r['peak_mmap_mb']:.0f}"
        out.append(f"| {LABELS[r['variant']]} | {r['step_s']:.1f} | {r['peak_mb']:.0f} | "
                   f"{vs_twin(r, 'peak_mb')} | {mmap} | {vs_twin(r, 'peak_mmap_mb')} | "
                   f"{r['saved_mb']:.0f} | {r['saved_trunk_mb']:.0f} | {vs_twin(r, 'saved_trunk_mb')} |")
    return "\n".join(out)


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
        print("RESULT " + json.dumps(accum_worker(args) if args.accum else worker(args)), flush=True)
        return
    if args.accum and args.batch % args.accum:
        p.error(f"--accum {args.accum} does not divide --batch {args.batch}")
    from backbones.memory import MMAP_MALLOC_ENV

    def run(v, *extra, env=None, accum=0):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", v, "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(0 if accum == 1 else args.steps),
               "--device", args.device, "--accum", str(accum), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{v} failed:\n{proc.stderr[-3000:]}")
        return json.loads(lines[-1][7:])

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
        print("\n".join(accum_targets(rows, args.accum)))
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
