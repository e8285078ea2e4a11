"""tools/demo_det.py on a tiny detector trained here: images of every colour mode and a video
are drawn, and bad inputs are one clear error (exit status 2, no traceback)."""

import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from revdet_tiny import ROOT, tiny_cfg, tiny_shapes_opts

TOOL = ROOT / "tools" / "demo_det.py"


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A tiny Rev-MViT Mask R-CNN trained for 10 iterations on tiny shapes: (config, weights,
    a folder of validation images)."""
    from revdet import shapes
    from revdet.engine import Trainer

    root = tmp_path_factory.mktemp("detector")
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", *tiny_shapes_opts(root / "shapes"),
                   "SOLVER.MAX_ITER", 10, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 2,
                   "SOLVER.CHECKPOINT_PERIOD", 1000,
                   "TEST.EVAL_PERIOD", 0, "DATALOADER.NUM_WORKERS", 0,
                   "OUTPUT_DIR", str(root / "train"))
    shapes.register_shapes_from_config(cfg)
    shapes.generate_used(cfg)  # shapes_train, and shapes_val: the demo's inputs and class names
    os.makedirs(cfg.OUTPUT_DIR)
    train_cfg = cfg.clone()
    train_cfg.DATASETS.TEST = ()  # no evaluation
    trainer = Trainer(train_cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    config = root / "tiny.yaml"
    config.write_text(cfg.dump())
    weights = root / "train" / "model_final.pth"
    assert weights.is_file()
    images = next((root / "shapes").glob("val-*")) / "images"
    return config, weights, images


def demo(detector, *args, check=True):
    config, weights, _ = detector
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(TOOL), "--config", str(config), *map(str, args),
                           "MODEL.WEIGHTS", str(weights)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow  # with the detector fixture: ~20-60 s
def test_images_of_every_colour_mode_are_drawn(detector, tmp_path):
    source = Image.open(sorted(detector[2].iterdir())[0]).convert("RGB")
    inputs = tmp_path / "in"
    inputs.mkdir()
    source.save(inputs / "rgb.png")
    source.save(inputs / "photo.jpg", quality=95)
    source.convert("L").save(inputs / "gray.png")
    rgba = source.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(inputs / "alpha.png")
    (inputs / "notes.txt").write_text("not an image: a folder input takes image files only")

    proc = demo(detector, "--input", inputs, "--output", tmp_path / "out",
                "--confidence-threshold", 0.0)
    names = ["alpha.png", "gray.png", "photo.jpg", "rgb.png"]
    assert sorted(os.listdir(tmp_path / "out")) == names
    for name in names:
        drawn = Image.open(tmp_path / "out" / name)
        assert drawn.mode == "RGB" and drawn.size == source.size
        original = np.asarray(Image.open(inputs / name).convert("RGB"), dtype=np.int16)
        changed = np.abs(np.asarray(drawn, dtype=np.int16) - original).max(-1) > 40
        assert changed.mean() > 0.02, name  # boxes, masks and labels drawn over it
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(str(inputs / name)))
        count = int(line.split(": ")[1].split()[0])
        assert count > 0 and any(c in line for c in ("circle", "square", "triangle")), line


@pytest.mark.slow  # with the detector fixture: ~20-60 s
def test_single_image_to_a_file(detector, tmp_path):
    image = sorted(detector[2].iterdir())[1]
    demo(detector, "--input", image, "--output", tmp_path / "pred.jpg",
         "--confidence-threshold", 0.0)
    assert Image.open(tmp_path / "pred.jpg").format == "JPEG"


@pytest.mark.slow  # with the detector fixture: ~20-60 s
def test_without_output_the_detections_are_printed(detector):
    proc = demo(detector, "--input", str(detector[2] / "*.png"), "--confidence-threshold", 0.0)
    assert len([ln for ln in proc.stdout.splitlines() if " instances in " in ln]) == \
        len(list(detector[2].glob("*.png")))


@pytest.mark.slow  # with the detector fixture: ~20-60 s
def test_video_is_annotated_frame_by_frame(detector, tmp_path):
    from revvideo.synthetic import write_mp4

    frames = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 48)))
                       for p in sorted(detector[2].iterdir())] * 2)  # 8 frames
    write_mp4(tmp_path / "clip.mp4", frames, fps=10)
    proc = demo(detector, "--video-input", tmp_path / "clip.mp4", "--output", tmp_path / "out",
                "--confidence-threshold", 0.0)
    out = tmp_path / "out" / "clip.mp4"
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 10
    assert len(decoded) == len(frames) and decoded[0].shape == frames[0].shape
    assert np.abs(decoded[0].astype(int) - frames[0]).max(-1).__gt__(40).mean() > 0.02
    assert f"{len(frames)} frames drawn" in proc.stdout
    assert "frame" in proc.stderr  # the progress bar


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """configs/demo_shapes_revmvit.yaml as `make demo` trains it, with untrained weights."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import revdet
    from revdet.checkpoint import RevDetCheckpointer

    root = tmp_path_factory.mktemp("untrained")
    cfg = revdet.add_revdet_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    torch.manual_seed(0)
    RevDetCheckpointer(build_model(cfg), str(root)).save("model_final")
    return root / "model_final.pth"


CONFIG = ROOT / "configs" / "demo_shapes_revmvit.yaml"


def start(args):
    return subprocess.Popen([sys.executable, str(TOOL), "--config", str(CONFIG), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_make_demo_config_names_the_shapes(untrained, tmp_path):
    """Its checkpoint loads and the class names come from the shapes metadata (untrained
    weights: every score counts)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)).save(tmp_path / "noise.png")
    proc = start(["--input", tmp_path / "noise.png", "--confidence-threshold", 0,
                  "MODEL.WEIGHTS", untrained])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    found = out.strip().splitlines()[-1].split("s: ", 1)[1].split(", ")
    assert found and {f.rsplit(" ", 1)[0] for f in found} <= {"circle", "square", "triangle"}


@pytest.mark.slow  # six processes, each importing torch and detectron2
def test_bad_inputs_are_one_clear_error(untrained, tmp_path):
    """Each case in its own process (started together): exit status 2, one message naming
    the culprit, no traceback, and the inputs untouched."""
    from revvideo.synthetic import write_mp4

    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(good.read_bytes()[:60])  # a truncated PNG
    truncated = tmp_path / "cut.mp4"
    write_mp4(truncated, np.zeros((6, 32, 32, 3), np.uint8), fps=5)
    truncated.write_bytes(truncated.read_bytes()[:-400])
    cases = {
        "missing": (["--input", tmp_path / "nope.png"], "nope.png does not exist"),
        "empty folder": (["--input", tmp_path / "empty"], "contains no image files"),
        "corrupt image": (["--input", corrupt], f"cannot read image {corrupt}"),
        "truncated video": (["--video-input", truncated, "--output", tmp_path / "o.mp4"],
                            f"cannot read video {truncated}"),
        "output over input": (["--input", good, "--output", good],
                              f"refusing to write {good}: it is the input"),
        "missing weights": (["--input", good, "MODEL.WEIGHTS", tmp_path / "w.pth"],
                            f"MODEL.WEIGHTS {tmp_path / 'w.pth'}: no such file"),
    }
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    running = {case: start([*args, "MODEL.WEIGHTS", untrained] if "weights" not in case else args)
               for case, (args, _) in cases.items()}
    for case, proc in running.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case, err[-3000:])
        assert "demo_det.py: error:" in err and cases[case][1] in err, (case, err[-3000:])
        assert "Traceback" not in err, case
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
