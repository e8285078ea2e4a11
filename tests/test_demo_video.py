"""tools/demo_video.py: a tiny classifier trained here on synthetic videos names the class of
clips it has not seen, whole videos and clip by clip (--timeline); bad inputs are one clear
error (exit status 2, no traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import revvideo
from revvideo.model import build_model
from revvideo.synthetic import CLASSES, ShapesSpec, ensure_dataset, render_clip, write_mp4

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "demo_video.py"
CONFIG = ROOT / "configs" / "demo_video_revmvit.yaml"  # what `make demo-video` trains
SPEC = ShapesSpec(num_train=120, num_val=30, frames=16, seed=3)  # 16 frames: one clip each
TRAINED = ("circle_down", "triangle_up")  # different shape and direction: learnt in ~50 steps


def _run(args, check=True, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """The demo config's Rev-MViT trained with tools/train_video.py for 10 epochs of 40
    synthetic videos of two classes: (weights, synthetic dataset folder)."""
    root = tmp_path_factory.mktemp("classifier")
    data = ensure_dataset(SPEC, root / "shapes")
    keep = {CLASSES.index(c) for c in TRAINED}
    for split in ("train", "val"):
        lines = [ln.split() for ln in (data / f"{split}.csv").read_text().splitlines()]
        (root / f"{split}.csv").write_text("".join(f"{data / p} {label}\n" for p, label in lines
                                                   if int(label) in keep))
    _run([ROOT / "tools" / "train_video.py", "--config", CONFIG, "DATA.DATASET", "kinetics",
          "DATA.PATH_TO_DATA_DIR", root, "SOLVER.MAX_EPOCH", 10, "TRAIN.BATCH_SIZE", 8,
          "SOLVER.WARMUP_EPOCHS", 1.0, "SOLVER.BASE_LR", 0.004, "TRAIN.CHECKPOINT_PERIOD", 100,
          "TRAIN.EVAL_PERIOD", 0, "TEST.ENABLE", False, "DATA_LOADER.NUM_WORKERS", 0,
          "SEED", 0, "OUTPUT_DIR", root / "train"])
    return root / "train" / "model_final.pth", data


@pytest.mark.slow
def test_unseen_videos_get_their_class(classifier, tmp_path):
    weights, data = classifier
    videos = sorted(p for c in TRAINED for p in (data / "val" / c).glob("*.mp4"))
    assert len(videos) == 10
    proc = _run([TOOL, "--config", CONFIG, "--weights", weights, "--json", tmp_path / "p.json",
                 data / "val" / TRAINED[0], str(data / "val" / TRAINED[1] / "*.mp4")])
    results = json.loads((tmp_path / "p.json").read_text())["videos"]
    assert [r["path"] for r in results] == [str(v) for v in videos]
    for r in results:
        truth = Path(r["path"]).parent.name
        assert r["top"][0]["label"] == truth, r  # the demo config names the 6 classes
        assert r["top"][0]["score"] > 0.5 and len(r["top"]) == 5
        assert r["views"] == 5 and r["frames"] == SPEC.frames and r["fps"] == SPEC.fps
    # printed: each file, then its top-5 by name
    lines = proc.stdout.splitlines()
    first = lines.index(next(ln for ln in lines if ln.startswith(str(videos[0]))))
    assert lines[first + 1].split()[:2] == ["1.", TRAINED[0]] and lines[first + 5].startswith("  5.")


@pytest.mark.slow
def test_timeline_follows_the_action(classifier, tmp_path):
    """A video of three 16-frame scenes (circle down, triangle up, circle down) is three
    consecutive clips, each labelled with its own scene."""
    weights, data = classifier
    rng = np.random.default_rng(7)
    scenes = [CLASSES.index(c) for c in (TRAINED[0], TRAINED[1], TRAINED[0])]
    write_mp4(tmp_path / "story.mp4",
              np.concatenate([render_clip(label, SPEC, rng) for label in scenes]), SPEC.fps)
    _run([TOOL, "--config", CONFIG, "--weights", weights, "--labels", data / "classes.txt",
          "--timeline", "--output", tmp_path / "plots", "--json", tmp_path / "story.json",
          tmp_path / "story.mp4"])
    result = json.loads((tmp_path / "story.json").read_text())["videos"][0]
    timeline = result["timeline"]
    assert result["frames"] == 48
    assert len(timeline["clips"]) == 48 // 16 and timeline["clip_seconds"] == pytest.approx(16 / 30)
    assert [c["top"][0]["label"] for c in timeline["clips"]] == [CLASSES[i] for i in scenes]
    assert [c["start"] for c in timeline["clips"]] == pytest.approx([0, 16 / 30, 32 / 30], abs=1e-3)
    plot = tmp_path / "plots" / "story_timeline.png"
    assert timeline["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_names_kinetics_synthetic_and_numbers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_video", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = revvideo.get_cfg()  # NUM_CLASSES 400: the Kinetics-400 names, alphabetical
    names = tool.class_names(cfg)
    assert len(names) == 400 and names[0] == "abseiling" and names == sorted(names)
    cfg.merge_from_file(str(CONFIG))
    assert tool.class_names(cfg) == CLASSES
    cfg.merge_from_list(["DATA.DATASET", "kinetics", "MODEL.NUM_CLASSES", 3])
    assert tool.class_names(cfg) == ["class 0", "class 1", "class 2"]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """Weights of the demo config's model, untrained (enough to check how inputs are read)."""
    root = tmp_path_factory.mktemp("untrained")
    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(CONFIG))
    import backbones

    backbones.save_checkpoint(root / "model.pth", build_model(cfg))
    clip = root / "clip.mp4"
    write_mp4(clip, render_clip(0, SPEC, np.random.default_rng(0)), SPEC.fps)
    truncated = root / "cut.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size * 2 // 3])
    (root / "empty").mkdir()
    (root / "three.txt").write_text("a\nb\nc\n")
    return root


@pytest.mark.slow  # six processes, each importing torch and detectron2
def test_bad_inputs_are_one_clear_error(untrained):
    """Each case in its own process (started together): exit status 2, one message naming
    the culprit, no traceback, and the input untouched."""
    root = untrained
    cases = {
        "missing": ([root / "nope.mp4"], f"video input {root / 'nope.mp4'} does not exist"),
        "truncated": ([root / "cut.mp4"], f"cannot read video {root / 'cut.mp4'}"),
        "empty folder": ([root / "empty"], f"the folder {root / 'empty'} contains no video files"),
        "json over input": (["--json", root / "clip.mp4", root / "clip.mp4"],
                            f"refusing to write {root / 'clip.mp4'}"),
        "labels": (["--labels", root / "three.txt", root / "clip.mp4"],
                   "has 3 names but the model has 6 classes"),
        "missing weights": ([root / "clip.mp4", "MODEL.WEIGHTS", root / "w.pth"],
                            f"MODEL.WEIGHTS {root / 'w.pth'}: no such file"),
    }
    before = (root / "clip.mp4").read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = {}
    for case, (args, _) in cases.items():
        weights = [] if case == "missing weights" else ["--weights", root / "model.pth"]
        running[case] = subprocess.Popen(
            [sys.executable, str(TOOL), "--config", str(CONFIG), *map(str, weights + args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    for case, proc in running.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case, err[-3000:])
        assert "demo_video.py: error:" in err and cases[case][1] in err, (case, err[-3000:])
        assert "Traceback" not in err, case
    assert (root / "clip.mp4").read_bytes() == before
