"""Training and evaluation on Detectron2's engine, with revdet's pieces plugged in.

``Trainer`` is Detectron2's ``DefaultTrainer`` (its hooks, ``EventStorage``, LR scheduler,
evaluation hook, ``metrics.json`` and TensorBoard writers, DDP) with:

* AdamW (``SOLVER.OPTIMIZER``) with zero weight decay for norms and, optionally, pos embeds;
* ``RevDetDatasetMapper`` and checked datasets (clear errors, see ``revdet.data``);
* ``COCOEvaluator`` for box and mask AP;
* ``RevDetCheckpointer`` (safe loading, backbone conversion, atomic saves);
* peak memory in the log line and in ``metrics.json`` (CUDA: allocated bytes; CPU: the
  process's resident high-water mark during each iteration);
* layer-wise LR decay of the backbone (``SOLVER.LAYER_DECAY``, ``backbones.lr_decay``);
* ``AccumTrainer``, the step: gradient accumulation (``SOLVER.ACCUM_ITER``) and mixed
  precision (``SOLVER.AMP``) on CUDA and on the CPU, where Detectron2's ``AMPTrainer``
  cannot run (it asserts CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
import weakref
from typing import Dict, List, Optional
from unittest import mock

import torch

from backbones.lr_decay import POS_EMBED_NAMES, lr_factor_func
from backbones.training import AMP_DTYPES, Accumulator, AccumulatorState

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, SimpleTrainer, create_ddp_model
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter, get_event_storage

from revvision.process_memory import reset_peak_rss, status_mb

from .checkpoint import RevDetCheckpointer
from .config import check_solver, training_device
from .data import RevDetDatasetMapper, check_datasets, guard_dataset

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ memory
class PeakMemory(HookBase):
    """Puts ``peak_mem_mb`` into the event storage after every iteration.

    CUDA: ``torch.cuda.max_memory_allocated`` since the previous iteration. CPU: the peak
    resident memory of the process during the iteration (``VmHWM`` after resetting it).
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()

    def before_step(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def after_step(self):
        value = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else status_mb("VmHWM")
        if value is not None:
            self.trainer.storage.put_scalar("peak_mem_mb", value, smoothing_hint=False)


class _SuffixLogger:
    def __init__(self, logger, suffix: str):
        self._logger, self._suffix = logger, suffix

    def info(self, msg, *args, **kwargs):
        self._logger.info(msg + self._suffix, *args, **kwargs)


class MetricPrinter(CommonMetricPrinter):
    """Detectron2's progress line (iteration, ETA, losses, time, lr) plus peak memory on
    the CPU (on CUDA Detectron2 already prints ``max_mem``)."""

    def write(self):
        suffix = ""
        if not torch.cuda.is_available():
            try:
                suffix = f"  peak_mem: {get_event_storage().history('peak_mem_mb').latest():.0f}M"
            except KeyError:
                pass
        plain = self.logger
        self.logger = _SuffixLogger(plain, suffix)
        try:
            super().write()
        finally:
            self.logger = plain


# ------------------------------------------------------------------ trainer
class AccumTrainer(AccumulatorState, SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` whose step sums the gradients of ``accum_iter``
    micro-batches (each loader batch cut in equal parts; all but the last outside DDP's
    gradient sync) and optionally runs forward under autocast (``amp_dtype``; bf16 works on
    the CPU, fp16 on CUDA gets a ``GradScaler``), then takes one optimizer step. One
    iteration is one optimizer step; the logged losses are those of the whole batch."""

    def __init__(self, model, data_loader, optimizer, accum_iter: int = 1,
                 amp_dtype: Optional[torch.dtype] = None, device_type: str = "cpu"):
        super().__init__(model, data_loader, optimizer)
        self.accumulator = Accumulator(model, optimizer, accum_iter, amp_dtype, device_type)

    def run_step(self):
        assert self.model.training, "[AccumTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad()
        loss_dict = self.accumulator.backward(self.accumulator.split(data), self.model)
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.accumulator.step()


@contextlib.contextmanager
def _default_trainer_init(cfg):
    """Let ``DefaultTrainer.__init__`` run for revdet: its DDP wrapper (the module-level
    ``create_ddp_model``, no method to override) passes the local rank as a CUDA device,
    which DDP refuses for a CPU model (detectron2 issue 5146), so a CPU training gets
    ``device_ids=None`` for this call; and with SOLVER.AMP it builds an ``AMPTrainer``
    (replaced at once by ``AccumTrainer``) whose ``torch.cuda.amp.GradScaler`` would warn
    (deprecated; no CUDA on the CPU)."""
    with contextlib.ExitStack() as stack:
        if training_device(cfg) == "cpu" and comm.get_world_size() > 1:
            stack.enter_context(mock.patch.object(
                d2_defaults, "create_ddp_model", functools.partial(create_ddp_model, device_ids=None)))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=r".*GradScaler")
        yield


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with revdet's optimizer, data, evaluator, step and checkpointer."""

    def __init__(self, cfg):
        # Bad settings, then missing or malformed data, fail before the model is built.
        check_solver(cfg, comm.get_world_size())
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            guard_dataset(name)
        check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        with _default_trainer_init(cfg):
            super().__init__(cfg)
        # DefaultTrainer.__init__ has no method to override for the step class or the
        # checkpointer class, so revdet's replace the ones it built (nothing has run yet):
        # AccumTrainer around the same model, loader and optimizer, and RevDetCheckpointer,
        # also in the hooks that hold the checkpointer.
        built = self._trainer
        amp_dtype = AMP_DTYPES[cfg.SOLVER.AMP.DTYPE] if cfg.SOLVER.AMP.ENABLED else None
        self._trainer = AccumTrainer(built.model, built.data_loader, built.optimizer,
                                     cfg.SOLVER.ACCUM_ITER, amp_dtype, training_device(cfg))
        built_checkpointer = self.checkpointer
        self.checkpointer = RevDetCheckpointer(built.model, self.cfg.OUTPUT_DIR,
                                               trainer=weakref.proxy(self))
        for hook in self._hooks:
            if getattr(hook, "checkpointer", None) is built_checkpointer:
                hook.checkpointer = self.checkpointer

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        n = sum(p.numel() for p in model.parameters())
        nb = sum(p.numel() for p in model.backbone.parameters())
        logger.info(f"Parameters: {n / 1e6:.2f}M (backbone incl. pyramid {nb / 1e6:.2f}M)")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD (as Detectron2's) or AdamW, over Detectron2's parameter groups (no weight decay
        for norms; WEIGHT_DECAY_BIAS, WEIGHT_DECAY_POS_EMBED) with the backbone's layer-wise
        LR decay as their ``lr_factor_func`` (as in ViTDet)."""
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name not in ("SGD", "ADAMW"):
            raise ValueError(f"SOLVER.OPTIMIZER must be SGD or ADAMW, got {cfg.SOLVER.OPTIMIZER!r}")
        pos_embed_wd = cfg.SOLVER.WEIGHT_DECAY_POS_EMBED
        overrides = ({name: {"weight_decay": pos_embed_wd} for name in POS_EMBED_NAMES}
                     if pos_embed_wd >= 0 else {})
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            lr_factor_func=lr_factor_func(model, cfg.SOLVER.LAYER_DECAY), overrides=overrides)
        if name == "SGD":
            optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                        nesterov=cfg.SOLVER.NESTEROV,
                                        weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR,
                                          betas=tuple(cfg.SOLVER.BETAS),
                                          weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        return maybe_add_gradient_clipping(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=RevDetDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        guard_dataset(dataset_name)
        check_datasets([dataset_name])
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=RevDetDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True,
                             output_dir=output_folder,
                             max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)

    def build_hooks(self):
        hooks = super().build_hooks()
        hooks.insert(1, PeakMemory(self.cfg.MODEL.DEVICE))
        return hooks

    def build_writers(self):
        return [MetricPrinter(self.max_iter),
                JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
                TensorboardXWriter(self.cfg.OUTPUT_DIR)]


# ------------------------------------------------------------------ results
def ap_table(results: Dict[str, Dict[str, float]]) -> str:
    """Markdown table of the COCO metrics of each task and dataset."""
    cols = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    flat = results
    if flat and all(isinstance(v, dict) and set(v) <= {"bbox", "segm", "keypoints"}
                    for v in flat.values()):
        rows = [(f"{ds} {task}", m) for ds, tasks in flat.items() for task, m in tasks.items()]
    else:
        rows = list(flat.items())
    lines = ["| task | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, metrics in rows:
        vals = [metrics.get(c, float("nan")) for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def visualize(cfg, model, dataset_name: str, out_dir: str, num_images: int,
              score_thresh: float = 0.5) -> List[str]:
    """Write ``num_images`` PNGs of predicted boxes and masks (Detectron2's Visualizer)."""
    import cv2
    from detectron2.utils.visualizer import ColorMode, Visualizer

    from detectron2.data import DatasetCatalog
    from detectron2.data import detection_utils as utils

    os.makedirs(out_dir, exist_ok=True)
    mapper = RevDetDatasetMapper(cfg, False)
    meta = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num_images]
    was_training = model.training
    model.eval()
    paths = []
    with torch.no_grad():
        for record in records:
            outputs = model([mapper(record)])[0]["instances"].to("cpu")
            outputs = outputs[outputs.scores >= score_thresh]
            image = utils.read_image(record["file_name"], format="RGB")
            vis = Visualizer(image, meta, scale=max(1.0, 480 / max(image.shape[:2])),
                             instance_mode=ColorMode.IMAGE)
            drawn = vis.draw_instance_predictions(outputs).get_image()
            path = os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0]
                                + "_pred.png")
            cv2.imwrite(path, drawn[:, :, ::-1])
            paths.append(path)
    model.train(was_training)
    return paths
