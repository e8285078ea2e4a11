"""tools/train_video.py end to end on tiny synthetic data: train, resume, evaluate, DDP."""

import importlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import revvideo  # noqa: F401  (pytorchvideo import fix)
from revvideo.model import build_model
from revvideo.synthetic import ShapesSpec, ensure_dataset

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "train_video.py"
SPEC = ShapesSpec(num_train=12, num_val=6, frames=24, width=40, height=32, fps=30, seed=2)


@pytest.fixture(scope="module")
def tool():
    """The module behind tools/train_video.py and revvision-train-video."""
    return importlib.import_module("revvision.train_video")


@pytest.fixture(scope="module")
def kinetics_dir(tmp_path_factory):
    """Kinetics-format lists over the synthetic videos, with one corrupt training video."""
    shapes = ensure_dataset(SPEC, tmp_path_factory.mktemp("shapes"))
    out = tmp_path_factory.mktemp("kinetics")
    corrupt = out / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # a header, then junk
    train = (shapes / "train.csv").read_text().splitlines()
    train = [f"{shapes / line.split()[0]} {line.split()[1]}" for line in train]
    train.insert(5, f"{corrupt} 3")
    (out / "train.csv").write_text("\n".join(train) + "\n")
    val = [f"{shapes / p} {lab}" for p, lab in (ln.split() for ln in (shapes / "val.csv").read_text().splitlines())]
    (out / "val.csv").write_text("\n".join(val) + "\n")
    return out


def opts(data_dir, out_dir, **extra):
    values = {
        "DATA.DATASET": "kinetics", "DATA.PATH_TO_DATA_DIR": str(data_dir),
        "DATA.NUM_FRAMES": 4, "DATA.SAMPLING_RATE": 2, "DATA.TRAIN_JITTER_SCALES": "[32,36]",
        "DATA_LOADER.NUM_WORKERS": 0, "TRAIN.BATCH_SIZE": 4, "TEST.BATCH_SIZE": 3,
        "TEST.NUM_ENSEMBLE_VIEWS": 2, "TRAIN.CHECKPOINT_PERIOD": 1, "TRAIN.EVAL_PERIOD": 0,
        "TRAIN.LOG_PERIOD": 1, "SOLVER.MAX_ITER": 4, "SOLVER.WARMUP_EPOCHS": 0.5,
        "OUTPUT_DIR": str(out_dir), "SEED": 0, "CPU_THREADS": 1,
    }
    values.update(extra)
    return [str(x) for kv in values.items() for x in kv]


def run(tool, *args):
    return tool.main(tool.parse_args(["--config", str(ROOT / "configs" / "demo_video_revmvit.yaml"),
                                      *args]))


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]


def test_train_resume_and_eval_only(tool, kinetics_dir, tmp_path):
    out = tmp_path / "run"
    # ---- train 4 iterations: one epoch of 13 listed videos (one corrupt) is 3 batches of 4
    results = run(tool, *opts(kinetics_dir, out))
    assert results["videos"] == SPEC.num_val  # what it learns: test_learns_the_synthetic_videos
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (out / "model_0000003.pth").is_file() and list(out.glob("events.out.tfevents.*"))
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert {"model", "model_config", "trainer", "iteration"} <= set(ckpt) and ckpt["iteration"] == 3
    metrics = read_metrics(out)
    train_rows = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in train_rows] == [0, 1, 2, 3]
    assert all("lr" in m and "data_time" in m for m in train_rows)
    assert any(m.get("skipped_videos") == 1 for m in metrics)  # the epoch summary's count
    assert "top1" in metrics[-1] and "top5" in metrics[-1]
    log = (out / "log.txt").read_text()
    assert "eta:" in log and "skipping video" in log and "corrupt.mp4" in log
    assert "Epoch 1 done: 12 clips in 3 batches from 13 videos, 1 skipped" in log

    # ---- resume: continues at iteration 4 with the saved optimizer and schedule
    run(tool, "--resume", *opts(kinetics_dir, out, **{"SOLVER.MAX_ITER": 6}))
    log = (out / "log.txt").read_text()
    assert f"Resuming from {out / 'model_final.pth'} at iteration 4" in log
    iters = [m["iteration"] for m in read_metrics(out) if "total_loss" in m]
    assert iters == [0, 1, 2, 3, 4, 5]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 5

    # ---- eval-only of the trained weights, through the config's architecture ...
    ev = tmp_path / "eval"
    res = run(tool, "--eval-only", *opts(kinetics_dir, ev, **{"MODEL.WEIGHTS": out / "model_final.pth"}))
    saved = json.loads((ev / "eval_results.json").read_text())
    assert saved["top1"] == pytest.approx(res["top1"]) and saved["videos"] == SPEC.num_val
    assert "| weights" in (ev / "log.txt").read_text() and (ev / "results.md").is_file()
    # ... the newest checkpoint of a run (--eval-only --resume), ...
    res3 = run(tool, "--eval-only", "--resume", *opts(kinetics_dir, out))
    assert res3["top1"] == pytest.approx(res["top1"])
    # ... and through the architecture stored in the checkpoint (MVIT.* overrides ignored)
    res2 = run(tool, "--eval-only", *opts(kinetics_dir, tmp_path / "eval2", **{
        "MODEL.WEIGHTS": out / "model_final.pth", "MODEL.ARCH": "weights", "MVIT.EMBED_DIM": 0,
        "MVIT.DEPTH": 0}))
    assert res2["top1"] == pytest.approx(res["top1"]) and res2["top5"] == pytest.approx(res["top5"])


def test_accumulation_bf16_and_layer_decay_end_to_end(tool, kinetics_dir, tmp_path):
    """Iterations, metrics and checkpoints count optimizer steps, not micro-batches."""
    out = tmp_path / "accum"
    run(tool, *opts(kinetics_dir, out, **{
        "SOLVER.ACCUM_ITER": 2, "SOLVER.AMP.ENABLED": True, "SOLVER.AMP.DTYPE": "bfloat16",
        "SOLVER.LAYER_DECAY": 0.8, "SOLVER.MAX_ITER": 3, "TEST.ENABLE": False}))
    rows = [m for m in read_metrics(out) if "total_loss" in m]
    assert [m["iteration"] for m in rows] == [0, 1, 2]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 2
    log = (out / "log.txt").read_text()
    assert "4 clips per process in 2 micro-batches x 1 processes" in log
    assert "3 iterations" in log and "bfloat16 autocast" in log


# Big enough shapes (radius ~8 px at the 48-px crop) to tell circles from squares, clips
# covering the whole motion (4 frames, 3 apart, of 12).
LEARN_SPEC = ShapesSpec(num_train=120, num_val=24, frames=12, width=56, height=48, fps=30, seed=3)


@pytest.mark.slow
def test_learns_the_synthetic_videos(tool, tmp_path_factory):
    """12 epochs of 120 videos (360 steps of 4 clips of 6 frames, ~45 s on one core) take the tiny
    Rev-MViT well above chance (16.7%) on the 24 validation videos: it must tell the shapes
    apart and see which way they move. Seeded and single-threaded; only the encoded videos
    can differ by a few pixels between runs (``revvideo.synthetic``)."""
    data = ensure_dataset(LEARN_SPEC, tmp_path_factory.mktemp("learn"))
    out = tmp_path_factory.mktemp("learn_run")
    results = run(tool, *opts(data, out, **{
        "DATA.NUM_FRAMES": 6, "DATA.SAMPLING_RATE": 2, "DATA.TRAIN_JITTER_SCALES": "[48,52]",
        "DATA.TRAIN_CROP_SIZE": 48, "DATA.TEST_CROP_SIZE": 48, "SOLVER.MAX_ITER": 0,
        "SOLVER.MAX_EPOCH": 12, "SOLVER.WARMUP_EPOCHS": 1.0, "TRAIN.CHECKPOINT_PERIOD": 100,
        "TRAIN.LOG_PERIOD": 20, "TEST.BATCH_SIZE": 8}))
    assert results["videos"] == LEARN_SPEC.num_val
    assert results["top1"] >= 60.0, results
    losses = [m["total_loss"] for m in read_metrics(out) if "total_loss" in m]
    assert len(losses) == 18 and losses[-1] < 0.6 * losses[0], losses


def test_eval_only_of_an_official_checkpoint(tool, kinetics_dir, tmp_path, golden_dir):
    """The golden official-format .pyth: the model is built from its embedded config."""
    pyth = golden_dir / "tiny_rev_mvit_video.pyth"
    extra = {"MODEL.WEIGHTS": pyth, "MODEL.ARCH": "weights", "MODEL.NUM_CLASSES": 10,
             "DATA.NUM_FRAMES": 8, "DATA.TRAIN_JITTER_SCALES": "[64,80]",
             "DATA.TRAIN_CROP_SIZE": 64, "DATA.TEST_CROP_SIZE": 64}
    args = tool.parse_args(["--config", str(ROOT / "configs" / "demo_video_revmvit.yaml"), "--eval-only",
                            *opts(kinetics_dir, tmp_path, **extra)])
    cfg = tool.setup(args)
    model = build_model(cfg).eval()
    io = torch.load(golden_dir / "tiny_rev_mvit_video_io.pt", weights_only=True)
    with torch.no_grad():
        assert torch.allclose(model(io["input"]), io["logits"], atol=1e-5, rtol=1e-4)
    results = tool.main(args)
    assert results["videos"] == SPEC.num_val and results["views_per_video"] == 2


def test_wrong_weights_fail_with_a_clear_message(tool, kinetics_dir, tmp_path, golden_dir):
    with pytest.raises(Exception, match=r"(?s)do not fit the model.*MODEL.ARCH weights"):
        run(tool, "--eval-only", *opts(kinetics_dir, tmp_path, **{
            "MODEL.WEIGHTS": golden_dir / "tiny_rev_mvit_video.pyth", "MODEL.NUM_CLASSES": 10}))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_training(kinetics_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, str(TOOL), "--config", str(ROOT / "configs" / "demo_video_revmvit.yaml"),
           "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
           *opts(kinetics_dir, out, **{"SOLVER.MAX_ITER": 3})]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log and "2 clips per process x 2 processes" in log
    assert (out / "model_final.pth").is_file()
    assert json.loads((out / "eval_results.json").read_text())["videos"] == SPEC.num_val


def test_kinetics_config_takes_the_released_checkpoint_layout(tmp_path, golden_dir):
    """configs/kinetics_revmvit_b_16x4.yaml builds exactly the model REV_MVIT_B_16x4.pyth holds
    (an official-format file made from the golden key list loads strictly) and prints the
    published numbers beside its evaluation table."""
    from revvideo.multiview import format_results

    state = {}
    for line in (golden_dir / "REV_MVIT_B_16x4_CONV_keys.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        state[key] = torch.zeros(json.loads(shape))
    pyth = tmp_path / "REV_MVIT_B_16x4.pyth"
    torch.save({"epoch": 199, "model_state": state}, pyth)
    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "kinetics_revmvit_b_16x4.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHTS", str(pyth)])
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == 34_963_120
    assert model.cfg.input_size == (16, 224, 224) and model.cfg.reversible
    assert model.rev_backprop and model.recompute_transitions
    table = format_results({"top1": 78.0, "top5": 93.0, "videos": 19000, "skipped": 0}, cfg)
    assert "published (REV_MVIT_B_16x4.pyth)" in table and "78.4" in table and "93.4" in table


def test_model_keys_map_through_the_shared_mapper():
    """MODEL.ARCH and the MVIT.* / MODEL.* / DATA.* keys build the model (as in revdet); the
    twin config names the renamed twin; an unknown MODEL.ARCH is a config error naming it."""
    from backbones.errors import ConfigError
    from revvideo.model import model_config

    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "kinetics_mvit_b_16x4.yaml"))
    cfg.merge_from_list(["MVIT.EMBED_DIM", 48, "MVIT.DROPPATH_RATE", -1.0, "DATA.NUM_FRAMES", 8,
                         "MODEL.NUM_CLASSES", 600])
    config = model_config(cfg)
    assert cfg.MODEL.ARCH == "nonrev_mvit_b_16x4" and not config.reversible
    assert (config.embed_dim, config.drop_path_rate, config.num_classes) == (48, 0.05, 600)
    assert config.input_size == (8, 224, 224) and config.head_dropout == 0.5
    cfg.MODEL.ARCH = "rev_mvit_x"
    with pytest.raises(ConfigError, match="MODEL.ARCH: unknown model 'rev_mvit_x'"):
        model_config(cfg)


class _Opaque:  # pickled by reference: torch.load(weights_only=True) refuses it
    pass


def test_checkpoints_are_atomic_and_loaded_weights_only(tmp_path, monkeypatch):
    from revvideo.checkpoint import VideoCheckpointer

    model = torch.nn.Linear(2, 2)
    ckpt = VideoCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    good = (tmp_path / "model_final.pth").read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_final")
    monkeypatch.undo()
    assert (tmp_path / "model_final.pth").read_bytes() == good  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]

    torch.save({"model": model.state_dict(), "extra": _Opaque()}, tmp_path / "unsafe.pth")
    with pytest.raises(RuntimeError, match="refusing to load .*unsafe.pth"):
        ckpt.load(str(tmp_path / "unsafe.pth"))


def test_lr_schedule_is_the_official_warmup_then_cosine():
    import math

    from revvideo.engine import build_lr_scheduler

    cfg = revvideo.get_cfg()  # BASE_LR 1e-4, warmup 50 of 200 epochs from 1e-6, cosine to 1e-6
    ipe = 10
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt, 200 * ipe, 50 * ipe)
    s = cfg.SOLVER

    def official(epoch):  # PySlowFast get_lr_at_epoch with COSINE_AFTER_WARMUP
        if epoch < s.WARMUP_EPOCHS:
            return s.WARMUP_START_LR + epoch * (s.BASE_LR - s.WARMUP_START_LR) / s.WARMUP_EPOCHS
        t = (epoch - s.WARMUP_EPOCHS) / (s.MAX_EPOCH - s.WARMUP_EPOCHS)
        return s.COSINE_END_LR + (s.BASE_LR - s.COSINE_END_LR) * (math.cos(math.pi * t) + 1) * 0.5

    for it in range(200 * ipe):
        if it % 37 == 0:
            assert opt.param_groups[0]["lr"] == pytest.approx(official(it / ipe), rel=1e-6, abs=1e-12)
        opt.step()
        sched.step()
