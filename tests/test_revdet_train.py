"""tools/train_det.py end to end on tiny COCO-layout data: train, resume, eval-only, DDP."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from revdet_tiny import BACKBONES, ROOT, TINY_HEADS, make_coco

TOOL = ROOT / "tools" / "train_det.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_config(path, backbone="build_rev_mvit_fpn_backbone"):
    """A YAML inheriting the demo config, shrunk to a tiny model on 64-px COCO-layout data."""
    opts = ["MODEL.BACKBONE.NAME", backbone] + BACKBONES[backbone] + TINY_HEADS + [
        "MODEL.ROI_HEADS.NUM_CLASSES", 80,
        "DATASETS.TRAIN", ["coco_2017_train"], "DATASETS.TEST", ["coco_2017_val"],
        "INPUT.MIN_SIZE_TRAIN", [64], "INPUT.MAX_SIZE_TRAIN", 64,
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 2,
        "TEST.VIS_IMAGES", 1]
    lines = [f"_BASE_: \"{ROOT / 'configs' / 'demo_shapes_revmvit.yaml'}\""]
    tree = {}
    for key, value in zip(opts[::2], opts[1::2]):
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def emit(node, indent):
        for k, v in node.items():
            if isinstance(v, dict):
                lines.append(" " * indent + f"{k}:")
                emit(v, indent + 2)
            else:
                lines.append(" " * indent + f"{k}: {json.dumps(v)}")

    emit(tree, 0)
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(args, datasets, timeout=600, **env):
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run([sys.executable, str(TOOL)] + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    if proc.returncode != 0:
        raise AssertionError(f"train_det.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    make_coco(root, "train", 4, seed=1)
    make_coco(root, "val", 3, seed=2)
    return root


@pytest.mark.slow
def test_train_then_resume_then_eval_only(coco_root, tmp_path):
    cfg = _tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    log = _run(["--config", cfg, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2,
                "OUTPUT_DIR", out], coco_root)
    files = set(os.listdir(out))
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth", "last_checkpoint",
            "metrics.json", "config.yaml", "log.txt", "results.md"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert not [f for f in files if ".tmp" in f]
    assert "eta:" in log and "peak_mem:" in log and "Starting training from iteration 0" in log
    iters = [m["iteration"] for m in _metrics(out) if "total_loss" in m]
    assert iters and iters[-1] == 3
    assert all("peak_mem_mb" in m for m in _metrics(out) if "total_loss" in m)
    assert "| coco_2017_val bbox |" in log or "| bbox |" in log
    assert os.listdir(out / "vis")

    log = _run(["--config-file", cfg, "--resume", "SOLVER.MAX_ITER", 6,
                "SOLVER.CHECKPOINT_PERIOD", 2, "OUTPUT_DIR", out], coco_root)
    assert "Starting training from iteration 4" in log
    iters = [m["iteration"] for m in _metrics(out) if "total_loss" in m]
    assert iters[-1] == 5

    log = _run(["--config", cfg, "--eval-only", "MODEL.WEIGHTS", out / "model_final.pth",
                "OUTPUT_DIR", tmp_path / "eval"], coco_root)
    assert "Starting training" not in log
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| bbox |" in table and "| segm |" in table
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 5


def test_missing_coco_gets_a_message_with_the_path(tmp_path):
    cfg = _tiny_config(tmp_path / "tiny.yaml")
    with pytest.raises(AssertionError) as err:
        _run(["--config", cfg, "SOLVER.MAX_ITER", 1, "OUTPUT_DIR", tmp_path / "out"],
             tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "coco" / "annotations" / "instances_train2017.json") in msg
    assert "Expected layout" in msg


@pytest.mark.slow
def test_accumulation_bf16_and_layer_decay(coco_root, tmp_path):
    """ACCUM_ITER 2 with bf16 autocast on the CPU: iterations, metrics and checkpoints count
    optimizer steps."""
    cfg = _tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    _run(["--config", cfg, "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 4,
          "SOLVER.ACCUM_ITER", 2, "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "bfloat16",
          "SOLVER.LAYER_DECAY", 0.8, "SOLVER.CHECKPOINT_PERIOD", 1000, "DATASETS.TEST", [],
          "TEST.VIS_IMAGES", 0, "OUTPUT_DIR", out], coco_root)
    ran = (out / "config.yaml").read_text()
    assert "ACCUM_ITER: 2" in ran and "DTYPE: bfloat16" in ran and "LAYER_DECAY: 0.8" in ran
    assert [m["iteration"] for m in _metrics(out) if "total_loss" in m] == [1]  # the last of 2
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1


def test_fp16_on_the_cpu_is_refused_before_training(coco_root, tmp_path):
    cfg = _tiny_config(tmp_path / "tiny.yaml")
    with pytest.raises(AssertionError, match="SOLVER.AMP.DTYPE float16 needs a CUDA device"):
        _run(["--config", cfg, "SOLVER.AMP.ENABLED", True, "OUTPUT_DIR", tmp_path / "out"],
             coco_root)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(coco_root, tmp_path):
    """Same 4 images per iteration (2 per process), deterministic sampling: the weights
    after 3 SGD steps agree. (Masks off: Mask R-CNN averages its mask loss per process
    over that process's positive boxes, which differs from the global average by design.)"""
    cfg = _tiny_config(tmp_path / "tiny.yaml")
    common = ["--config", cfg, "SOLVER.MAX_ITER", 3, "SOLVER.IMS_PER_BATCH", 4,
              "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", 0.02, "SOLVER.WARMUP_ITERS", 0,
              "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", [100],
              "SOLVER.CHECKPOINT_PERIOD", 1000, "TEST.EVAL_PERIOD", 0, "DATASETS.TEST", [],
              "TEST.VIS_IMAGES", 0, "MODEL.MASK_ON", False, "INPUT.RANDOM_FLIP", "none",
              "DATALOADER.ASPECT_RATIO_GROUPING", False,
              # take every anchor and every proposal: no random subsampling
              "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 4096, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 20,
              "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512, "SEED", 7]
    _run(common + ["OUTPUT_DIR", tmp_path / "one"], coco_root)
    _run(["--num-gpus", 2, "--dist-url", f"tcp://127.0.0.1:{_free_port()}"] + common
         + ["OUTPUT_DIR", tmp_path / "two"], coco_root)
    ck_one = torch.load(tmp_path / "one" / "model_final.pth", weights_only=True)
    ck_two = torch.load(tmp_path / "two" / "model_final.pth", weights_only=True)
    one, two = ck_one["model"], ck_two["model"]
    assert set(one) == set(two)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=2e-5, msg=key)
    # SGD momentum = accumulated gradients: non-zero, and the same in both runs.
    mom_one = ck_one["trainer"]["_trainer"]["optimizer"]["state"]
    mom_two = ck_two["trainer"]["_trainer"]["optimizer"]["state"]
    assert len(mom_one) == len(one) == len(mom_two)  # every parameter got gradients
    for i, state in mom_one.items():
        buf = state["momentum_buffer"]
        torch.testing.assert_close(mom_two[i]["momentum_buffer"], buf, rtol=2e-3, atol=1e-5)
    assert sum(float(s["momentum_buffer"].abs().sum() > 0) for s in mom_one.values()) > 0.9 * len(mom_one)
    losses_one = [m["total_loss"] for m in _metrics(tmp_path / "one") if "total_loss" in m]
    losses_two = [m["total_loss"] for m in _metrics(tmp_path / "two") if "total_loss" in m]
    assert losses_one and losses_two
    assert abs(losses_one[-1] - losses_two[-1]) < 1e-3 * max(1.0, abs(losses_one[-1]))
