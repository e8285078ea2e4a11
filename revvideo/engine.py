"""Training and multi-view evaluation of the video classifier on Detectron2's engine.

``Trainer`` is a Detectron2 ``SimpleTrainer`` (hooks, ``EventStorage``, metric gathering
across processes) whose step is the official recipe: a batch of clips, MixUp/CutMix with
label smoothing, soft cross-entropy, AdamW. Around it, Detectron2's hooks: iteration timer,
LR schedule (linear warmup, then cosine), periodic atomic checkpoints, periodic evaluation,
and the writers (console with ETA, ``metrics.json``, TensorBoard). Several processes run
under ``detectron2.engine.launch`` with PyTorch ``DistributedDataParallel``
(``find_unused_parameters=False``: every parameter is used; reversible backprop works with
either setting).

Schedule and periods are in epochs (``SOLVER.MAX_EPOCH``, ``TRAIN.CHECKPOINT_PERIOD``,
``TRAIN.EVAL_PERIOD``) and run as iterations: one epoch is
``ceil(videos / (clips per process x processes))`` iterations.

A step can sum the gradients of several micro-batches (``SOLVER.ACCUM_ITER``) and run
under autocast (``SOLVER.AMP``; bf16 on the CPU): ``backbones.training.Accumulator``.
Iterations are optimizer steps.

``evaluate(cfg, model)`` runs the official multi-view test (``revvideo.multiview``) with
``inference_on_dataset`` (progress with ETA) and returns top-1/top-5.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from . import compat

compat.apply()

from detectron2.engine import SimpleTrainer, hooks  # noqa: E402
from detectron2.engine.defaults import default_writers  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.solver import LRMultiplier, WarmupParamScheduler  # noqa: E402
from detectron2.solver.build import get_default_optimizer_params  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402
from fvcore.common.param_scheduler import CosineParamScheduler, LinearParamScheduler  # noqa: E402

from backbones.lr_decay import POS_EMBED_NAMES, lr_factor_func  # noqa: E402
from backbones.training import AMP_DTYPES, Accumulator, AccumulatorState  # noqa: E402

from .checkpoint import VideoCheckpointer  # noqa: E402
from .config import check_solver  # noqa: E402
from .data import (build_test_dataset, build_test_loader, build_train_dataset,  # noqa: E402
                   build_train_loader, per_process_batch, read_split)
from .model import MultiViewClassifier, build_model  # noqa: E402
from .multiview import MultiViewEvaluator, TestViews, format_results  # noqa: E402
from .transforms import BatchMix, soft_cross_entropy  # noqa: E402

logger = logging.getLogger(__name__)


def resolve_device(cfg) -> torch.device:
    if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available():
        return torch.device("cuda", comm.get_local_rank())
    return torch.device("cpu")


# ---------------------------------------------------------------------- optimization
def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) over Detectron2's parameter groups, as in revdet: no weight decay on
    norms and biases (``SOLVER.ZERO_WD_1D_PARAM``) or position embeddings
    (``SOLVER.ZERO_WD_POS_EMBED``), and the backbone's layer-wise LR decay
    (``SOLVER.LAYER_DECAY``) as the LR factor of each parameter."""
    s = cfg.SOLVER
    lr = base_lr(cfg)
    no_decay = 0.0 if s.ZERO_WD_1D_PARAM else None
    pos_embed = {name: {"weight_decay": 0.0} for name in POS_EMBED_NAMES} if s.ZERO_WD_POS_EMBED else {}
    groups = get_default_optimizer_params(
        model, base_lr=lr, weight_decay=s.WEIGHT_DECAY, weight_decay_norm=no_decay,
        weight_decay_bias=no_decay, lr_factor_func=lr_factor_func(model, s.LAYER_DECAY),
        overrides=pos_embed)
    method = s.OPTIMIZING_METHOD.lower()
    if method == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(s.BETAS))
    if method == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=s.MOMENTUM, nesterov=True)
    raise ValueError(f"SOLVER.OPTIMIZING_METHOD must be adamw or sgd, got {s.OPTIMIZING_METHOD!r}")


def base_lr(cfg) -> float:
    """``SOLVER.BASE_LR``, times the number of machines with ``BASE_LR_SCALE_NUM_SHARDS``."""
    machines = max(1, comm.get_world_size() // max(1, comm.get_local_size()))
    return cfg.SOLVER.BASE_LR * (machines if cfg.SOLVER.BASE_LR_SCALE_NUM_SHARDS else 1)


def build_lr_scheduler(cfg, optimizer, max_iter: int, warmup_iter: int) -> LRMultiplier:
    """Linear warmup from WARMUP_START_LR, then cosine from the base LR to COSINE_END_LR."""
    s = cfg.SOLVER
    if s.LR_POLICY != "cosine":
        raise ValueError(f"SOLVER.LR_POLICY {s.LR_POLICY!r} is not supported (cosine)")
    lr = base_lr(cfg)
    if warmup_iter >= max_iter:  # the whole run is warmup
        schedule = LinearParamScheduler(s.WARMUP_START_LR / lr, 1.0)
    else:
        schedule = CosineParamScheduler(1.0, s.COSINE_END_LR / lr)
        if warmup_iter > 0:
            schedule = WarmupParamScheduler(schedule, s.WARMUP_START_LR / lr, warmup_iter / max_iter,
                                            "linear", rescale_interval=True)
    return LRMultiplier(optimizer, schedule, max_iter)


# -------------------------------------------------------------------------- training
class ClipTrainer(AccumulatorState, SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` with the official video step: MixUp/CutMix and label
    smoothing on the batch of clips, soft cross-entropy, gradient clipping, one optimizer
    step. The batch is cut into ``accum_iter`` micro-batches whose gradients are summed
    (after mixing the whole batch, so the step equals the one without accumulation), and
    forward can run under autocast (``amp_dtype``): ``backbones.training.Accumulator``."""

    def __init__(self, model, data_loader, optimizer, mix: BatchMix, accum_iter: int = 1,
                 amp_dtype: Optional[torch.dtype] = None, device: torch.device = torch.device("cpu"),
                 clip_grad: float = 0.0):
        super().__init__(model, data_loader, optimizer)
        self.mix, self.device, self.clip_grad = mix, device, clip_grad
        self.accumulator = Accumulator(model, optimizer, accum_iter, amp_dtype, device.type)

    def run_step(self):
        assert self.model.training, "the model was switched to eval mode"
        start = time.perf_counter()
        batch = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        videos = batch["video"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        videos, targets = self.mix(videos, labels)  # the whole batch, as without accumulation

        def loss(part: range) -> Dict[str, torch.Tensor]:
            logits = self.model(videos[part.start:part.stop])
            return {"loss_cls": soft_cross_entropy(logits, targets[part.start:part.stop])}

        self.optimizer.zero_grad(set_to_none=True)
        losses = self.accumulator.backward(self.accumulator.split(range(len(videos))), loss)
        if self.clip_grad > 0:
            self.accumulator.unscale_()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self._write_metrics(losses, data_time)
        self.accumulator.step()


class Trainer(ClipTrainer):
    """Everything ``tools/train_video.py`` trains with, built from the config."""

    def __init__(self, cfg):
        check_solver(cfg, comm.get_local_size())
        self.cfg = cfg
        self.device = resolve_device(cfg)
        model = build_model(cfg, allow_new_head=True).to(self.device)
        self.videos = read_split(cfg, cfg.DATA.TRAIN_SPLIT)
        if cfg.TEST.ENABLE:
            self.test_videos = read_split(cfg, cfg.DATA.TEST_SPLIT)  # fail early on a bad list
        clips = per_process_batch(cfg.TRAIN.BATCH_SIZE, "TRAIN.BATCH_SIZE")
        self.iters_per_epoch = max(1, math.ceil(len(self.videos.videos) / (clips * comm.get_world_size())))
        self.max_iter = cfg.SOLVER.MAX_ITER or cfg.SOLVER.MAX_EPOCH * self.iters_per_epoch
        warmup = int(round(cfg.SOLVER.WARMUP_EPOCHS * self.iters_per_epoch))

        self.dataset = build_train_dataset(cfg, self.videos)
        loader = build_train_loader(cfg, 0, self.dataset)
        optimizer = build_optimizer(cfg, model)
        ddp = model
        if comm.get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False,
                                          find_unused_parameters=False)
        amp_dtype = AMP_DTYPES[cfg.SOLVER.AMP.DTYPE] if cfg.SOLVER.AMP.ENABLED else None
        super().__init__(ddp, loader, optimizer, BatchMix.from_config(cfg), cfg.SOLVER.ACCUM_ITER,
                         amp_dtype, self.device, cfg.SOLVER.CLIP_GRAD_L2NORM)
        self.net = model  # unwrapped
        self.scheduler = build_lr_scheduler(cfg, optimizer, self.max_iter, warmup)
        self.checkpointer = VideoCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
                                              trainer=weakref.proxy(self))
        self.start_iter = 0
        self.register_hooks(self.build_hooks())
        accum = f" in {cfg.SOLVER.ACCUM_ITER} micro-batches" if cfg.SOLVER.ACCUM_ITER > 1 else ""
        amp = f", {cfg.SOLVER.AMP.DTYPE} autocast" if cfg.SOLVER.AMP.ENABLED else ""
        logger.info(f"Training on {len(self.videos.videos)} videos ({self.videos.source}): "
                    f"{clips} clips per process{accum} x {comm.get_world_size()} processes, "
                    f"{self.iters_per_epoch} iterations per epoch, {self.max_iter} iterations "
                    f"({self.max_iter / self.iters_per_epoch:.1f} epochs), base LR {base_lr(cfg):g}, "
                    f"{warmup} warmup iterations, device {self.device}{amp}")

    def build_hooks(self) -> List[hooks.HookBase]:
        cfg, ipe = self.cfg, self.iters_per_epoch
        out = [hooks.IterationTimer(), hooks.LRScheduler(self.optimizer, self.scheduler)]
        if comm.is_main_process():
            out.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.TRAIN.CHECKPOINT_PERIOD * ipe,
                                                  max_iter=self.max_iter))
        if cfg.TEST.ENABLE:
            out.append(hooks.EvalHook(cfg.TRAIN.EVAL_PERIOD * ipe, self._evaluate))
        if comm.is_main_process():
            out.append(hooks.PeriodicWriter(default_writers(cfg.OUTPUT_DIR, self.max_iter),
                                            period=cfg.TRAIN.LOG_PERIOD))
        return out

    def _evaluate(self) -> Dict[str, float]:
        self._last_eval_results = evaluate(self.cfg, self.net, videos=self.test_videos)
        return self._last_eval_results

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a checkpoint in OUTPUT_DIR, continue from it (model, optimizer,
        schedule, iteration); otherwise start at iteration 0 from MODEL.WEIGHTS (already loaded)."""
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            self.checkpointer.resume_or_load(path, resume=True)
            self.start_iter = self.iter + 1
            logger.info(f"Resuming from {path} at iteration {self.start_iter}")
        else:
            if resume:
                logger.info(f"No checkpoint in {self.cfg.OUTPUT_DIR} to resume from; starting "
                            "from MODEL.WEIGHTS" if self.cfg.MODEL.WEIGHTS else "from scratch")
            self.start_iter = 0
        self.data_loader.epoch = self.start_iter // self.iters_per_epoch

    def train(self):
        super().train(self.start_iter, self.max_iter)
        return getattr(self, "_last_eval_results", None)


# ------------------------------------------------------------------------ evaluation
def evaluate(cfg, model: torch.nn.Module, videos=None) -> "OrderedDict[str, float]":
    """Official multi-view test of ``model`` on ``DATA.TEST_SPLIT``; prints the table."""
    dataset = build_test_dataset(cfg, videos)
    loader = build_test_loader(cfg, dataset)
    views = cfg.TEST.NUM_ENSEMBLE_VIEWS * cfg.TEST.NUM_SPATIAL_CROPS
    evaluator = MultiViewEvaluator(cfg.MODEL.NUM_CLASSES, dataset.expected_ids(),
                                   dataset.video_paths, expected_views=views)
    device = next(model.parameters()).device
    logger.info(f"Evaluating on {len(dataset.video_paths)} videos ({cfg.DATA.TEST_SPLIT} split), "
                f"{cfg.TEST.NUM_ENSEMBLE_VIEWS} clips x {cfg.TEST.NUM_SPATIAL_CROPS} crops per video")
    normalize = TestViews.from_config(cfg).normalize  # the loader's views are uint8
    results = inference_on_dataset(MultiViewClassifier(model, device, normalize), loader, evaluator)
    if comm.is_main_process() and results:
        logger.info("Results:\n" + format_results(results, cfg))
        save_results(cfg, results)
    return results


def save_results(cfg, results: Dict[str, float]) -> None:
    """``OUTPUT_DIR/eval_results.json``: the metrics, the weights and the architecture (through
    Detectron2's ``PathManager``, so any OUTPUT_DIR the checkpoints can use works)."""
    if cfg.OUTPUT_DIR:
        PathManager.mkdirs(cfg.OUTPUT_DIR)
        with PathManager.open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(dict(results, weights=cfg.MODEL.WEIGHTS, arch=cfg.MODEL.ARCH), f, indent=1)
