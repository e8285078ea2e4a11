"""The train tools as a user meets them: config names from any directory, the default demos,
and one clean message (exit status 2, no traceback) for every problem the user can fix.

The subprocess tests run from a temporary directory outside the repository and stop before
training starts, except the one short video run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import backbones
from backbones.errors import UserError
from conftest import tiny_model
from revvision import cli
from revvision.config_files import config_names, merge_config, resolve_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DET = ROOT / "tools" / "train_det.py"
TRAIN_VIDEO = ROOT / "tools" / "train_video.py"


def run_tool(tool, *args, cwd, **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, str(tool), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(proc, *culprits):
    """Exit status 2, one ``prog: error:`` message naming every culprit, no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index(errors[0]):]
    for culprit in culprits:
        assert str(culprit) in message, message
    return message


# ---------------------------------------------------------------------- config lookup
def test_config_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = ROOT / "configs" / "coco_revmvit.yaml"
    for value in ("coco_revmvit.yaml", "coco_revmvit", "configs/coco_revmvit.yaml",
                  str(own)):
        assert resolve_config(value) == own
    # a path relative to the working directory comes first, even with a config's name
    (tmp_path / "configs").mkdir()
    mine = tmp_path / "configs" / "coco_revmvit.yaml"
    mine.write_text("_BASE_: coco_revmvit.yaml\n")
    assert resolve_config("configs/coco_revmvit.yaml") == mine
    assert resolve_config("coco_revmvit.yaml") == own
    assert {"coco_revmvit.yaml", "demo_shapes_revmvit.yaml", "demo_video_revmvit.yaml"} \
        <= set(config_names())


def test_unknown_config_lists_the_available_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        resolve_config("coco_revmvit_xl")
    assert "'coco_revmvit_xl' not found" in str(e.value)
    assert all(name in str(e.value) for name in config_names())
    with pytest.raises(UserError):  # an absolute path is only ever that path
        resolve_config(str(tmp_path / "coco_revmvit.yaml"))


def test_base_inheritance_works_for_a_config_found_by_name(tmp_path, monkeypatch):
    import revdet
    from detectron2.config import get_cfg

    monkeypatch.chdir(tmp_path)
    cfg = merge_config(revdet.add_revdet_config(get_cfg()), resolve_config("coco_mvit"))
    assert cfg.MODEL.BACKBONE.NAME == "build_mvit_fpn_backbone"  # coco_mvit.yaml
    assert cfg.SOLVER.BASE_LR == 0.00016  # its _BASE_ coco_revmvit.yaml
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"  # and that one's Base-MaskRCNN-FPN


@pytest.mark.parametrize("text, culprit", [
    ("MODEL:\n  NO_SUCH_KEY: 1\n", "MODEL.NO_SUCH_KEY"),
    ("SOLVER:\n  MAX_ITER: many\n", "SOLVER.MAX_ITER"),
    ("MODEL: [unclosed\n", "bad.yaml"),
    ("_BASE_: missing_base.yaml\n", "missing_base.yaml"),
])
def test_bad_config_files_name_the_file_and_key(tmp_path, text, culprit):
    import revvideo

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(UserError) as e:
        merge_config(revvideo.get_cfg(), bad)
    assert str(bad) in str(e.value) and culprit in str(e.value)


def test_bad_overrides_name_the_key():
    import revvideo

    config = ROOT / "configs" / "demo_video_revmvit.yaml"
    with pytest.raises(UserError, match="Non-existent key: TRAIN.NO_SUCH_KEY"):
        merge_config(revvideo.get_cfg(), config, ["TRAIN.NO_SUCH_KEY", "1"])
    with pytest.raises(UserError, match="SOLVER.MAX_EPOCH"):
        merge_config(revvideo.get_cfg(), config, ["SOLVER.MAX_EPOCH", "ten"])
    with pytest.raises(UserError, match="odd length"):
        merge_config(revvideo.get_cfg(), config, ["SOLVER.MAX_EPOCH"])


def test_run_reports_user_errors_and_keeps_other_tracebacks(capsys, monkeypatch):
    monkeypatch.delenv("REVVISION_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["tool"])

    def bad_input():
        raise UserError("file x.yaml: no such key")

    with pytest.raises(SystemExit) as e:
        cli.run(bad_input, prog="tool")
    assert e.value.code == 2 and capsys.readouterr().err == "tool: error: file x.yaml: no such key\n"
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda: 1 / 0)
    monkeypatch.setenv("REVVISION_DEBUG", "1")
    with pytest.raises(UserError):
        cli.run(bad_input)


# ------------------------------------------------------------- the tools, from elsewhere
def test_train_det_finds_coco_revmvit_and_reports_missing_coco(tmp_path):
    empty = tmp_path / "datasets"
    empty.mkdir()
    proc = run_tool(TRAIN_DET, "--config", "coco_revmvit.yaml", "--eval-only", cwd=tmp_path,
                    DETECTRON2_DATASETS=empty)
    assert proc.stdout.splitlines()[0] == (
        f"Config: {ROOT / 'configs' / 'coco_revmvit.yaml'} "
        "(--config coco_revmvit.yaml: one of revvision's configs)")
    assert_user_error(proc, "dataset 'coco_2017_val' not found",
                      empty / "coco" / "annotations" / "instances_val2017.json",
                      empty / "coco" / "val2017", "Expected layout")


def test_train_det_without_config_runs_the_demo(tmp_path):
    # the demo's config is chosen (and says so first); pointing it at a missing COCO makes
    # it stop before training
    proc = run_tool(TRAIN_DET, "--eval-only", "DATASETS.TEST", "('coco_2017_val',)",
                    cwd=tmp_path, DETECTRON2_DATASETS=tmp_path)
    assert proc.stdout.splitlines()[0] == (
        f"Config: {ROOT / 'configs' / 'demo_shapes_revmvit.yaml'} "
        "(no --config given: running the detection demo)")
    assert_user_error(proc, "dataset 'coco_2017_val' not found")


def test_unknown_config_name_exits_2_listing_the_names(tmp_path):
    proc = run_tool(TRAIN_DET, "--config", "coco_revmvit_xl", cwd=tmp_path)
    assert_user_error(proc, "'coco_revmvit_xl' not found", *config_names())


def test_bad_config_key_and_value_exit_2(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f"_BASE_: {ROOT / 'configs' / 'demo_shapes_revmvit.yaml'}\n"
                      "SOLVER:\n  MAX_ITERS: 10\n")
    proc = run_tool(TRAIN_DET, "--config", config, cwd=tmp_path)
    assert_user_error(proc, config, "SOLVER.MAX_ITERS")
    proc = run_tool(TRAIN_VIDEO, "--config", "demo_video_revmvit", "TRAIN.BATCH_SIZE", "four",
                    cwd=tmp_path)
    assert_user_error(proc, "command-line override", "TRAIN.BATCH_SIZE")


def test_malformed_coco_annotations_exit_2(tmp_path):
    coco = tmp_path / "datasets" / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    broken = coco / "annotations" / "instances_val2017.json"
    broken.write_text('{"images": [')
    proc = run_tool(TRAIN_DET, "--eval-only", "DATASETS.TEST", "('coco_2017_val',)",
                    cwd=tmp_path, DETECTRON2_DATASETS=tmp_path / "datasets")
    assert_user_error(proc, f"malformed annotation file {broken}: not valid JSON")


def test_missing_weights_file_exits_2(tmp_path):
    proc = run_tool(TRAIN_DET, "--config", "demo_shapes_revmvit", "MODEL.WEIGHTS",
                    "no/such/REV_MVIT_B.pyth", "DATASETS.SHAPES.ROOT", tmp_path / "shapes",
                    "DATASETS.SHAPES.NUM_TRAIN", 2, "DATASETS.SHAPES.NUM_VAL", 2, cwd=tmp_path)
    assert_user_error(proc, "MODEL.WEIGHTS no/such/REV_MVIT_B.pyth: no such file", tmp_path)


@pytest.fixture(scope="module")
def video_lists(tmp_path_factory):
    """Tiny synthetic videos, a good list of them, and a malformed one."""
    from revvideo.synthetic import ShapesSpec, ensure_dataset

    root = ensure_dataset(ShapesSpec(num_train=6, num_val=3, frames=16, width=32, height=32,
                                     seed=3), tmp_path_factory.mktemp("videos"))
    bad = tmp_path_factory.mktemp("bad_lists")
    (bad / "train.csv").write_text(f"{root / 'train' / 'x.mp4'} up\n")
    (bad / "val.csv").write_text((root / "val.csv").read_text())
    return root, bad


def video_opts(data_dir, out, **extra):
    values = {"DATA.DATASET": "kinetics", "DATA.PATH_TO_DATA_DIR": data_dir,
              "DATA_LOADER.NUM_WORKERS": 0, "TRAIN.BATCH_SIZE": 3, "TEST.BATCH_SIZE": 3,
              "TEST.NUM_ENSEMBLE_VIEWS": 1, "SOLVER.MAX_EPOCH": 1, "TRAIN.LOG_PERIOD": 1,
              "CPU_THREADS": 1, "OUTPUT_DIR": out, **extra}
    return [str(x) for kv in values.items() for x in kv]


def test_malformed_or_missing_video_lists_exit_2(video_lists, tmp_path):
    _, bad = video_lists
    proc = run_tool(TRAIN_VIDEO, *video_opts(bad, tmp_path / "out"), cwd=tmp_path)
    assert proc.stdout.splitlines()[0].endswith(
        "demo_video_revmvit.yaml (no --config given: running the video demo)")
    assert_user_error(proc, bad / "train.csv", "line 1: label 'up' is not an integer")
    proc = run_tool(TRAIN_VIDEO, *video_opts(tmp_path / "nowhere", tmp_path / "out"),
                    cwd=tmp_path)
    assert_user_error(proc, tmp_path / "nowhere" / "train.csv", tmp_path / "nowhere" / "train")


class _Opaque:  # pickled by reference: weights_only loading refuses it
    pass


@pytest.mark.parametrize("kind", ["wrong architecture", "not a checkpoint", "unsafe"])
def test_unusable_weights_exit_2(video_lists, tmp_path, kind):
    root, _ = video_lists
    path = tmp_path / "weights.pth"
    if kind == "wrong architecture":
        backbones.save_checkpoint(path, tiny_model("vit"))
        culprits = [path, "MODEL.ARCH weights"]
    elif kind == "not a checkpoint":
        path.write_text("these are not weights\n")
        culprits = [path, "not a PyTorch checkpoint"]
    else:
        torch.save({"model": {}, "opaque": _Opaque()}, path)
        culprits = [f"refusing to load {path}", "arbitrary"]
    proc = run_tool(TRAIN_VIDEO, "--eval-only",
                    *video_opts(root, tmp_path / "out", **{"MODEL.WEIGHTS": path}), cwd=tmp_path)
    assert_user_error(proc, *culprits)


def test_debug_shows_the_traceback(tmp_path):
    proc = run_tool(TRAIN_DET, "--config", "coco_revmvit_xl", "--debug", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "UserError: config 'coco_revmvit_xl' not found" in proc.stderr


def test_train_video_runs_a_short_epoch_from_another_directory(video_lists, tmp_path):
    root, _ = video_lists
    out = tmp_path / "out"
    proc = run_tool(TRAIN_VIDEO, "--config", "demo_video_revmvit",
                    *video_opts(root, out, **{"TRAIN.CHECKPOINT_PERIOD": 1}), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == (
        f"Config: {ROOT / 'configs' / 'demo_video_revmvit.yaml'} "
        "(--config demo_video_revmvit: one of revvision's configs)")
    log = (out / "log.txt").read_text()
    assert "2 iterations per epoch, 2 iterations (1.0 epochs)" in log  # 6 videos, 3 per batch
    assert json.loads((out / "eval_results.json").read_text())["videos"] == 3
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_a_user_error_in_a_worker_process_exits_2_once(video_lists, tmp_path):
    """With --num-gpus 2 weights of another architecture are found in the workers: one
    message, exit 2; a file that cannot be loaded is found before they start."""
    import socket

    root, _ = video_lists
    path = tmp_path / "weights.pth"
    backbones.save_checkpoint(path, tiny_model("vit"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_tool(TRAIN_VIDEO, "--num-gpus", 2, "--dist-url", f"tcp://127.0.0.1:{port}",
                    *video_opts(root, tmp_path / "out", **{"MODEL.WEIGHTS": path}), cwd=tmp_path)
    assert_user_error(proc, f"the weights in {path}", "MODEL.ARCH weights")
    # an unsafe file is refused before any process starts
    torch.save({"model": {}, "opaque": _Opaque()}, path)
    proc = run_tool(TRAIN_VIDEO, "--num-gpus", 2, "--dist-url", f"tcp://127.0.0.1:{port}",
                    *video_opts(root, tmp_path / "out", **{"MODEL.WEIGHTS": path}), cwd=tmp_path)
    assert_user_error(proc, f"refusing to load {path}")
    assert "Command Line Args" not in proc.stdout


# ------------------------------------------------------------------ a regular install
@pytest.mark.slow
def test_a_regular_install_finds_its_configs(tmp_path):
    """``pip install .`` (not editable) into a fresh venv that borrows this environment's
    packages through a .pth file; its console script resolves coco_revmvit.yaml."""
    import shutil
    import sysconfig

    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "output", "build", "dist", "*.egg-info", "__pycache__",
        "tests", "tools"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", str(source)], check=True, env=env, timeout=300)
    shutil.rmtree(source)  # the install must not need its source

    packaged = Path(purelib) / "revvision" / "configs"
    assert sorted(p.name for p in packaged.glob("*.yaml")) == config_names()
    empty = tmp_path / "datasets"
    empty.mkdir()
    proc = subprocess.run([str(venv / "bin" / "revvision-train-det"), "--config",
                           "coco_revmvit.yaml", "--eval-only"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          env={**env, "DETECTRON2_DATASETS": str(empty), "OMP_NUM_THREADS": "1"})
    assert proc.stdout.splitlines()[0] == (
        f"Config: {packaged / 'coco_revmvit.yaml'} "
        "(--config coco_revmvit.yaml: one of revvision's configs)")
    assert_user_error(proc, "revvision-train-det: error: dataset 'coco_2017_val' not found")
