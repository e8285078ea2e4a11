"""The measurements behind the README tables: the helpers of ``tools/measure.py`` measure
known allocations exactly, and the benchmark scripts still run at toy sizes, where their
exact measure (bytes saved for backward) orders the models as the README says. Wall times
and resident peaks of models are not asserted: they are noise at these sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from measure import (SavedTensorMeter, accumulated_step, gradient_summing, run_fresh, step_peak_mb,
                     time_rounds)

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# ------------------------------------------------------------------ the helpers
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_step_peak_is_the_steps_own_allocation():
    """64 MiB allocated and written inside the step is its peak; an earlier, larger peak
    of the process (256 MiB) is forgotten."""
    earlier = torch.ones(256 * MIB // 4)
    del earlier
    peak = step_peak_mb(lambda: torch.ones(64 * MIB // 4).sum())
    assert 60 <= peak < 64 + 16, peak  # pages already resident may serve a little of it


def test_nested_meters_count_a_storage_once():
    """A meter around part of the forward takes that part's saved tensors; a storage the
    outer meter already holds is not counted again; excluded storages never count."""
    x = torch.randn(1000, requires_grad=True)
    w = torch.randn(1000, requires_grad=True)
    outer = SavedTensorMeter(exclude=[w])
    inner = SavedTensorMeter(exclude=[w], seen=outer.seen)
    with outer.hooks():
        y = x.exp()  # saves y (4000 bytes): outer
        with inner.hooks():
            z = (y * y) * w  # y again (seen), then y * y (4000 bytes) and w (excluded)
    (z.sum()).backward()
    assert (outer.total_bytes, inner.total_bytes) == (4000, 4000)


def test_gradient_summing_counts_the_accumulation_nodes():
    """One ``AccumulateGrad`` per parameter and micro-batch; only the accumulated step sums
    into existing gradients, so only it spends measurable time there on big parameters."""
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.Linear(2048, 512))
    x = torch.randn(8, 512)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def forward(rows):
        return {"loss": model(x[rows.start:rows.stop]).square().mean()}

    direct = gradient_summing(lambda: accumulated_step(model, optimizer, range(8), 1, forward))
    accum = gradient_summing(lambda: accumulated_step(model, optimizer, range(8), 4, forward))
    assert (direct["calls"], accum["calls"]) == (4, 16)
    assert accum["seconds"] > direct["seconds"] > 0


def test_timed_settings_rotate_their_order_every_round():
    ran = []
    times = time_rounds(ran.append, ("a", "b", "c"), rounds=4, per=2)
    assert ran == list("abc" "bca" "cab" "abc")
    assert {n: len(t) for n, t in times.items()} == {"a": 4, "b": 4, "c": 4}


def test_fresh_worker_returns_its_last_json_line_or_its_error(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import json, os, sys\n"
                      "n = int(sys.argv[1])\n"
                      "if n < 0:\n"
                      "    sys.exit('negative input')\n"
                      "print('progress')\n"
                      "print(json.dumps({'n': n}))\n"
                      "print(json.dumps({'twice': 2 * n, 'env': os.environ.get('BENCH_X')}))\n")
    assert run_fresh(script, [3], {"BENCH_X": "1"}) == {"twice": 6, "env": "1"}
    with pytest.raises(RuntimeError, match="exit code 1: negative input"):
        run_fresh(script, [-1])


# ------------------------------------------------------------------ the scripts
@pytest.mark.slow
def test_benchmark_memory_quick(tmp_path):
    out = _run("tools/benchmark_memory.py", "--quick", "--out", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    saved = {(r["variant"], r["depth"]): r["saved_mb"] for r in results["results"]}
    assert saved[("rev_vit_b", 4)] <= 1.05 * saved[("rev_vit_b", 2)], saved
    assert saved[("rev_vit_b", 2)] <= saved[("vit_b", 2)] / 6, saved
    assert saved[("vit_b", 4)] >= 1.5 * saved[("vit_b", 2)], saved
    assert (tmp_path / "memory_vs_depth.png").stat().st_size > 0
    assert "Rev-ViT-B" in out and "ViT-B + checkpointing" in out
    # the interleaved sweeps time every model once per sweep
    times = {r["depth"]: r["step_times_s"] for r in results["interleaved"]}
    assert {v: len(t) for v, t in times[4].items()} == {"vit_b": 2, "vit_b_ckpt": 2, "rev_vit_b": 2}


@pytest.mark.slow
def test_benchmark_video_memory_tiny(tmp_path):
    _run("tools/benchmark_video.py", "memory", "--frames", 4, "--size", 32, "--out", tmp_path)
    rows = {r["variant"]: r for r in json.loads((tmp_path / "results.json").read_text())["memory"]}
    saved = {k: r["saved_mb"] for k, r in rows.items()}
    assert saved["rev_mvit_b_16x4"] < 0.2 * saved["rev_mvit_b_16x4_stored"], saved
    assert saved["rev_mvit_b_16x4_stored"] < 0.5 * saved["mvit_b_16x4"], saved
    assert all(r["peak_mmap_mb"] > 0 for r in rows.values())


@pytest.mark.slow
def test_benchmark_video_loading_tiny(tmp_path):
    _run("tools/benchmark_video.py", "loading", "--sizes", "340x256", "--videos", 1, "--clips", 2,
         "--test-videos", 1, "--rounds", 2, "--loader-batch", 2, "--out", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["pipeline"]: r for r in results["loading"]}
    assert len(rows) == len(results["loading"]) == 12 and rows["floor"]["ratio"] == 1.0
    for r in rows.values():  # each ratio pairs the rounds of the pipeline and its reference
        ref = rows[r["reference"]]["rounds_per_s"]
        ratios = sorted(a / b for a, b in zip(r["rounds_per_s"], ref))
        assert r["ratio"] == pytest.approx(sum(ratios) / 2) and r["rounds"] == 2
    assert rows["test"]["reference"] == "full_decode" and rows["train_2_workers"]["reference"] == "train"
    # the train and test pipelines time the users' loaders: batches of --loader-batch clips and
    # of TEST.BATCH_SIZE videos, the first batch of each worker not timed
    assert rows["train_2_workers"]["batch"] == 2 and rows["test"]["batch"] == 4 and rows["floor"]["batch"] == 1
    assert all(n % 2 == 0 for n in rows["train"]["rounds_items"])
    # clips and videos are counted, not a clip's frames: 3 clips or videos, 1 batch of 4 videos
    assert rows["floor"]["rounds_items"] == rows["full_decode"]["rounds_items"] == [3, 3]
    assert rows["test"]["rounds_items"] == [4, 4]


@pytest.mark.slow
def test_benchmark_det_memory_tiny(tmp_path):
    out = tmp_path / "rows.json"
    _run("tools/benchmark_det_memory.py", "--size", 64, "--steps", 1, "--json", out,
         "--variants", "rev_mvit_b", "rev_mvit_b_stored", "mvit_b")
    trunk = {r["variant"]: r["saved_trunk_mb"] for r in json.loads(out.read_text())}
    assert trunk["rev_mvit_b"] < 0.2 * trunk["rev_mvit_b_stored"], trunk
    assert trunk["rev_mvit_b_stored"] < 0.6 * trunk["mvit_b"], trunk
