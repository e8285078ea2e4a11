"""Config keys of revvideo: a yacs ``CfgNode`` (Detectron2's, so ``_BASE_`` inheritance works).

    import revvideo
    cfg = revvideo.get_cfg()
    cfg.merge_from_file("configs/kinetics_revmvit_b_16x4.yaml")
    cfg.merge_from_list(["DATA.PATH_TO_DATA_DIR", "/data/k400", "TRAIN.BATCH_SIZE", "8"])

Key names follow PySlowFast where it has one (``DATA.NUM_FRAMES``, ``DATA.SAMPLING_RATE``,
``MVIT.DROPPATH_RATE``, ``MIXUP.*``, ``SOLVER.*``, ``TEST.NUM_ENSEMBLE_VIEWS`` ...) and
Detectron2 otherwise (``MODEL.WEIGHTS``, ``OUTPUT_DIR``, ``SEED``). Defaults are the official
Rev-MViT-B 16x4 Kinetics-400 recipe; ``configs/kinetics_revmvit_b_16x4.yaml`` states it in
full.
"""

from __future__ import annotations

import torch

from backbones import training
from backbones.config_keys import mvit_overrides
from detectron2.config import CfgNode as _Detectron2CfgNode
from fvcore.common.config import CfgNode as _FvcoreCfgNode


class CN(_Detectron2CfgNode):
    """Detectron2's ``CfgNode`` (what ``default_setup`` expects) whose ``merge_from_file`` is
    fvcore's: ``_BASE_`` inheritance without Detectron2's config-version checks, which only
    make sense for Detectron2's own keys."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True) -> None:
        _FvcoreCfgNode.merge_from_file(self, cfg_filename, allow_unsafe=allow_unsafe)


def get_cfg() -> CN:
    """A fresh copy of the default config."""
    return _C.clone()


def training_device(cfg) -> str:
    """"cuda" or "cpu": where training runs (MODEL.DEVICE cuda falls back to the CPU)."""
    return "cuda" if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available() else "cpu"


def check_solver(cfg, processes_per_machine: int = 1) -> None:
    """Raise ``backbones.errors.UserError`` naming the key if SOLVER.ACCUM_ITER,
    SOLVER.LAYER_DECAY or SOLVER.AMP cannot work (called before any data is read)."""
    training.check_solver(cfg.SOLVER, cfg.TRAIN.BATCH_SIZE, "TRAIN.BATCH_SIZE", processes_per_machine,
                          training_device(cfg), "processes per machine")


_C = CN()

# ------------------------------------------------------------------------------ model
_C.MODEL = CN()
# A `backbones` zoo name (rev_mvit_b_16x4, or its non-reversible twin nonrev_mvit_b_16x4), or
# "weights": build the architecture embedded in MODEL.WEIGHTS (an official .pyth or a
# revvision checkpoint).
_C.MODEL.ARCH = "rev_mvit_b_16x4"
_C.MODEL.NUM_CLASSES = 400
# Initial weights for training, or the weights --eval-only evaluates: an official .pyth
# (e.g. REV_MVIT_B_16x4.pyth), a checkpoint written by tools/train_video.py, or any file
# backbones.load_checkpoint reads. Loaded with torch.load(weights_only=True).
_C.MODEL.WEIGHTS = ""
_C.MODEL.DROPOUT_RATE = 0.5  # dropout before the classifier (official MODEL.DROPOUT_RATE)
# False trains a reversible model with plain autograd through the same blocks (more
# memory, same gradients); for comparisons.
_C.MODEL.REV_BACKPROP = True
# With REV_BACKPROP, also recompute the non-reversible stage transitions in backward
# instead of storing their activations (backbones.MViT): less memory for one extra
# forward of those few layers. False is the official model's behaviour.
_C.MODEL.RECOMPUTE_TRANSITIONS = False
_C.MODEL.DEVICE = "cuda"  # falls back to "cpu" when CUDA is not available

# Architecture overrides of the zoo model, with SlowFast's names (revdet reads the same keys
# through backbones.config_keys); 0 / [] keep the zoo value, DROPPATH_RATE < 0 too.
_C.MVIT = CN(mvit_overrides())  # EMBED_DIM, DEPTH, ..., DIM_MUL, POOL_Q_STRIDE, PATCH_*
_C.MVIT.DROPPATH_RATE = 0.05  # the official recipe; < 0 keeps the zoo value

# ------------------------------------------------------------------------------- data
_C.DATA = CN()
# "kinetics": videos listed in PATH_TO_DATA_DIR/<split>.csv ("<path> <label>" per line,
# as PySlowFast and pytorchvideo read them), or stored as PATH_TO_DATA_DIR/<split>/<class>/
# <video>.mp4 (classes numbered in sorted order). "synthetic_shapes": the built-in
# synthetic Kinetics-format dataset (DATA.SYNTHETIC), generated once and cached.
_C.DATA.DATASET = "kinetics"
_C.DATA.PATH_TO_DATA_DIR = ""
# Prefix of relative video paths in the CSV files ("" = the CSV file's own folder).
_C.DATA.PATH_PREFIX = ""
_C.DATA.TRAIN_SPLIT = "train"
_C.DATA.TEST_SPLIT = "val"  # Kinetics is evaluated on its validation set
_C.DATA.NUM_FRAMES = 16
_C.DATA.SAMPLING_RATE = 4
_C.DATA.TARGET_FPS = 30
_C.DATA.TRAIN_JITTER_SCALES = [256, 320]  # random short side, pixels
_C.DATA.TRAIN_CROP_SIZE = 224
_C.DATA.TEST_CROP_SIZE = 224
_C.DATA.MEAN = [0.45, 0.45, 0.45]
_C.DATA.STD = [0.225, 0.225, 0.225]
_C.DATA.RANDOM_FLIP = True
# Videos that decode to fewer frames than this are skipped as too short (with a warning,
# counted). Longer videos shorter than a clip are used as the official loader does.
_C.DATA.MIN_FRAMES = 4
# PyAV decoder threads per video: 1 decodes in the loader's own thread, n > 1 turns on
# FFmpeg's frame threading with n threads, 0 lets FFmpeg use one per core. With as many
# loader workers as cores, 1 is best: on a quiet 2-core machine 2 threads gave 0.78x
# (340x256) and 0.95x (1280x720) the clips/s of 1 with 2 workers (tools/benchmark_video.py
# loading); with 0 workers 2 threads help large videos (1.26x at 720p). Pixels do not change.
_C.DATA.DECODING_THREADS = 1

# The synthetic dataset: shapes (circle, square, triangle) moving up or down; the class is
# the shape and its direction. ROOT "" = $REVVISION_CACHE/video_shapes if that variable is
# set, else .cache/revvision/video_shapes in the repository checkout.
_C.DATA.SYNTHETIC = CN(dict(ROOT="", NUM_TRAIN=360, NUM_VAL=120, FRAMES=32, WIDTH=64, HEIGHT=48,
                           FPS=30, SEED=0))

_C.DATA_LOADER = CN()
_C.DATA_LOADER.NUM_WORKERS = 8  # per process
_C.DATA_LOADER.PIN_MEMORY = True
# How loader workers start (new workers every epoch). "fork" starts them in milliseconds; it
# is Linux's default, but processes started by `launch` (spawn) would otherwise spawn their
# workers too, re-importing everything each epoch. "" = PyTorch's default; "spawn" /
# "forkserver" switch tensor sharing to the file_system strategy.
_C.DATA_LOADER.START_METHOD = "fork"

# ----------------------------------------------------------------------- augmentation
# RandAugment (pytorchvideo's, on the cropped clip) in timm notation: m = magnitude,
# n = number of ops, mstd = magnitude noise; "inc1" is accepted and ignored.
_C.AUG = CN()
_C.AUG.ENABLE = True
_C.AUG.AA_TYPE = "rand-m7-n4-mstd0.5-inc1"

# MixUp / CutMix on each training batch (pytorchvideo's MixVideo): CutMix with probability
# SWITCH_PROB, else MixUp; PROB is the chance a batch is mixed at all. Label smoothing
# applies with or without mixing.
_C.MIXUP = CN()
_C.MIXUP.ENABLE = True
_C.MIXUP.ALPHA = 0.8
_C.MIXUP.CUTMIX_ALPHA = 1.0
_C.MIXUP.PROB = 1.0
_C.MIXUP.SWITCH_PROB = 0.5
_C.MIXUP.LABEL_SMOOTH_VALUE = 0.1

# ------------------------------------------------------------------------- optimizer
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZING_METHOD = "adamw"  # adamw | sgd
_C.SOLVER.BASE_LR = 1e-4
# As in PySlowFast: multiply BASE_LR by the number of machines (--num-machines), since
# TRAIN.BATCH_SIZE is per machine.
_C.SOLVER.BASE_LR_SCALE_NUM_SHARDS = True
_C.SOLVER.BETAS = [0.9, 0.999]
_C.SOLVER.MOMENTUM = 0.9  # sgd
_C.SOLVER.WEIGHT_DECAY = 0.07
_C.SOLVER.ZERO_WD_1D_PARAM = True  # no weight decay for biases and norm weights
_C.SOLVER.ZERO_WD_POS_EMBED = True  # nor for position embeddings (official ZERO_DECAY_POS_CLS)
_C.SOLVER.LR_POLICY = "cosine"  # cosine after a linear warmup (official COSINE_AFTER_WARMUP)
_C.SOLVER.COSINE_END_LR = 1e-6
_C.SOLVER.WARMUP_START_LR = 1e-6
_C.SOLVER.WARMUP_EPOCHS = 50.0
_C.SOLVER.MAX_EPOCH = 200
# > 0: stop after this many iterations instead of MAX_EPOCH epochs (the schedule is then
# laid out over MAX_ITER).
_C.SOLVER.MAX_ITER = 0
_C.SOLVER.CLIP_GRAD_L2NORM = 0.0  # > 0: clip the gradient norm
# Layer-wise LR decay (backbones.lr_decay): block i of L trains with the LR times
# LAYER_DECAY ** (L - i), the patch and position embeddings with ** (L + 1), the final norm
# and head with the full LR. 1.0 = off.
_C.SOLVER.LAYER_DECAY = 1.0
# Gradient accumulation: each iteration (optimizer step) runs ACCUM_ITER micro-batches of
# BATCH_SIZE / ACCUM_ITER clips per machine and sums their gradients (backbones.training).
# The schedule, iterations per epoch, checkpoints and metrics count optimizer steps.
_C.SOLVER.ACCUM_ITER = 1
# Mixed precision: forward and loss under torch.autocast. DTYPE float16 (CUDA, with a
# GradScaler) or bfloat16 (CUDA or CPU).
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False
_C.SOLVER.AMP.DTYPE = "float16"

# -------------------------------------------------------------------------- training
_C.TRAIN = CN()
# Clips per iteration on one machine, split evenly over its --num-gpus processes (as in
# PySlowFast; the global batch is BATCH_SIZE x --num-machines).
_C.TRAIN.BATCH_SIZE = 16
_C.TRAIN.CHECKPOINT_PERIOD = 10  # epochs
_C.TRAIN.EVAL_PERIOD = 10  # epochs; 0 = evaluate only at the end
_C.TRAIN.LOG_PERIOD = 20  # iterations

# ------------------------------------------------------------------------ evaluation
_C.TEST = CN()
_C.TEST.ENABLE = True  # evaluate after training (and every TRAIN.EVAL_PERIOD epochs)
_C.TEST.BATCH_SIZE = 4  # videos per batch (each with NUM_ENSEMBLE_VIEWS x NUM_SPATIAL_CROPS views)
_C.TEST.NUM_ENSEMBLE_VIEWS = 5  # temporal clips per video
_C.TEST.NUM_SPATIAL_CROPS = 1  # 1: center crop at short side TRAIN_JITTER_SCALES[0]; 3: left/center/right at TEST_CROP_SIZE

# ------------------------------------------------------------------------------ misc
_C.OUTPUT_DIR = "./output/video"
_C.SEED = 0  # < 0: random
# PyTorch intra-op threads per process; 0 = PyTorch's default (all cores). On a small,
# shared CPU, 1 thread per process (and one loader worker) avoids oversubscription.
_C.CPU_THREADS = 0
_C.CUDNN_BENCHMARK = False
