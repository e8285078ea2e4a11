"""SOLVER.ACCUM_ITER / LAYER_DECAY / AMP in both tools: bad values are refused with one
clear error before any data is read, and bf16 autocast trains on the CPU.

(That reversible gradients under bf16 autocast agree with plain autograd is
tests/test_reversible.py::test_bf16_autocast_backward_outside_autocast.)"""

import pytest
import torch

import revdet
import revvideo
from backbones.errors import UserError
from revdet_tiny import DETERMINISTIC_LOSS, tiny_batch, tiny_cfg
from test_revvideo_train import ROOT, SPEC, opts, run

BAD = [  # (KEY VALUE overrides, message)
    (["SOLVER.ACCUM_ITER", 3], r"SOLVER.ACCUM_ITER 3 does not divide {batch} \(8\)"),
    (["SOLVER.ACCUM_ITER", 0], r"SOLVER.ACCUM_ITER must be a positive integer, got 0"),
    (["SOLVER.LAYER_DECAY", 0.0], r"SOLVER.LAYER_DECAY must be in \(0, 1\] .*got 0.0"),
    (["SOLVER.LAYER_DECAY", 1.5], r"SOLVER.LAYER_DECAY must be in \(0, 1\] .*got 1.5"),
    (["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "float16", "MODEL.DEVICE", "cpu"],
     r"SOLVER.AMP.DTYPE float16 needs a CUDA device, but training runs on the CPU: use "
     r"SOLVER.AMP.DTYPE bfloat16"),
    (["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "half"],
     r"SOLVER.AMP.DTYPE must be one of \['bfloat16', 'float16'\], got 'half'"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_detection_config_errors(overrides, message):
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", "SOLVER.IMS_PER_BATCH", 8, *overrides)
    with pytest.raises(UserError, match=message.format(batch="SOLVER.IMS_PER_BATCH")):
        revdet.config.check_solver(cfg)


@pytest.mark.parametrize("overrides, message", BAD)
def test_video_config_errors(overrides, message):
    cfg = revvideo.get_cfg()
    cfg.merge_from_list(["TRAIN.BATCH_SIZE", 8] + overrides)
    with pytest.raises(UserError, match=message.format(batch="TRAIN.BATCH_SIZE")):
        revvideo.config.check_solver(cfg)


def test_accumulation_is_checked_per_process():
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", "SOLVER.IMS_PER_BATCH", 8, "SOLVER.ACCUM_ITER", 4)
    revdet.config.check_solver(cfg, world_size=1)
    with pytest.raises(UserError, match=r"does not divide SOLVER.IMS_PER_BATCH \(8\) / 4 processes \(2\)"):
        revdet.config.check_solver(cfg, world_size=4)
    vcfg = revvideo.get_cfg()
    vcfg.merge_from_list(["TRAIN.BATCH_SIZE", 8, "SOLVER.ACCUM_ITER", 8])
    revvideo.config.check_solver(vcfg, processes_per_machine=1)
    with pytest.raises(UserError, match=r"TRAIN.BATCH_SIZE \(8\) / 2 processes per machine \(4\)"):
        revvideo.config.check_solver(vcfg, processes_per_machine=2)


def test_errors_come_before_the_data(tmp_path, monkeypatch):
    """A missing dataset would fail too; the config error is the one reported."""
    from revdet.engine import Trainer
    import importlib

    tool = importlib.import_module("revvision.train_video")

    monkeypatch.chdir(tmp_path)  # no ./datasets/coco here
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", "DATASETS.TRAIN", ["coco_2017_train"],
                   "SOLVER.IMS_PER_BATCH", 4, "SOLVER.ACCUM_ITER", 3)
    with pytest.raises(UserError, match="SOLVER.ACCUM_ITER 3"):
        Trainer(cfg)
    with pytest.raises(UserError, match="SOLVER.LAYER_DECAY"):
        run(tool, *opts(tmp_path / "no_such_dir", tmp_path / "out", **{"SOLVER.LAYER_DECAY": 2.0}))


def test_detection_trainer_runs_revdet_step_and_checkpointer(tmp_path):
    """``Trainer`` is Detectron2's ``DefaultTrainer`` with revdet's step (accumulation,
    bf16 autocast) and checkpointer in place of the ones it builds, in the hooks too; the
    CUDA-only AMPTrainer it builds first on the way is gone without a warning."""
    import warnings

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json
    from revdet.checkpoint import RevDetCheckpointer
    from revdet.engine import AccumTrainer, Trainer
    from revdet_tiny import make_coco

    json_file, image_root = make_coco(tmp_path / "data", "train", 2)
    (tmp_path / "out").mkdir()
    name = "tiny_trainer_parts"
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root)
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", "DATASETS.TRAIN", [name], "DATASETS.TEST", [],
                   "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.IMS_PER_BATCH", 2,
                   "SOLVER.ACCUM_ITER", 2, "SOLVER.AMP.ENABLED", True,
                   "SOLVER.AMP.DTYPE", "bfloat16", "DATALOADER.NUM_WORKERS", 0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = Trainer(cfg)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert not [w for w in caught if "GradScaler" in str(w.message)]
    step = trainer._trainer
    assert type(step) is AccumTrainer
    assert (step.accumulator.accum_iter, step.accumulator.amp_dtype) == (2, torch.bfloat16)
    assert type(trainer.checkpointer) is RevDetCheckpointer
    holders = [h for h in trainer._hooks if hasattr(h, "checkpointer")]
    assert holders and all(h.checkpointer is trainer.checkpointer for h in holders)
    assert trainer.checkpointer.model is trainer.model


# ------------------------------------------------------------------ bf16 on the CPU
def _losses(trainer, steps):
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(steps):
            trainer.iter = it
            trainer.run_step()
        return [v for v, _ in storage.history("total_loss").values()]


def test_detection_bf16_steps_lower_the_loss():
    from detectron2.modeling import build_model
    from revdet.engine import AccumTrainer

    torch.manual_seed(0)
    model = build_model(tiny_cfg("build_rev_mvit_fpn_backbone", *DETERMINISTIC_LOSS)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = AccumTrainer(model, [tiny_batch(4)] * 6, optimizer, accum_iter=2,
                           amp_dtype=torch.bfloat16)
    seen = []
    model.backbone.register_forward_hook(lambda m, i, out: seen.append(out["p2"].dtype))
    losses = _losses(trainer, 6)
    assert set(seen) == {torch.bfloat16}  # autocast was on
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.9 * losses[0], losses


def test_video_bf16_steps_lower_the_loss(tmp_path):
    """Synthetic videos through the training pipeline, one batch repeated."""
    from revvideo.data import build_train_dataset
    from revvideo.engine import ClipTrainer, build_optimizer
    from revvideo.model import build_model
    from revvideo.synthetic import ensure_dataset
    from revvideo.transforms import BatchMix

    data = ensure_dataset(SPEC, tmp_path)
    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "demo_video_revmvit.yaml"))
    cfg.merge_from_list(opts(data, tmp_path / "out", **{"SOLVER.AMP.ENABLED": True,
                                                         "SOLVER.AMP.DTYPE": "bfloat16"}))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(build_train_dataset(cfg), batch_size=6)
    batch = next(iter(loader))
    model = build_model(cfg).train()
    trainer = ClipTrainer(model, [batch] * 6, build_optimizer(cfg, model), BatchMix.from_config(cfg),
                          accum_iter=3, amp_dtype=torch.bfloat16)
    losses = _losses(trainer, 6)
    assert losses[-1] < 0.8 * losses[0], losses
