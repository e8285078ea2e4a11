"""Train or evaluate a Rev-MViT video classifier (Kinetics, or the built-in synthetic set).

    # the demo: synthetic shapes videos, a tiny Rev-MViT, trains and evaluates on a CPU
    python tools/train_video.py

    # Kinetics-400 with the official recipe, 8 processes (GPUs) on one machine
    python tools/train_video.py --config kinetics_revmvit_b_16x4.yaml --num-gpus 8 \\
        DATA.PATH_TO_DATA_DIR /data/kinetics400

    # evaluate the released checkpoint with the official protocol (5 clips x 1 crop)
    python tools/train_video.py --config kinetics_revmvit_b_16x4.yaml --eval-only \\
        MODEL.WEIGHTS REV_MVIT_B_16x4.pyth DATA.PATH_TO_DATA_DIR /data/kinetics400

    # continue an interrupted run from OUTPUT_DIR/last_checkpoint
    python tools/train_video.py --config demo_video_revmvit --resume

The same command is ``revvision-train-video`` or ``python -m revvision.train_video``.
``--config`` (or ``--config-file``) takes a YAML path or the name of one of revvision's
configs (``demo_video_revmvit``, ``kinetics_revmvit_b_16x4.yaml``, ``configs/...``) from any
directory; without it the demo (``demo_video_revmvit.yaml``) runs. Then Detectron2's
``--eval-only``, ``--resume``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``,
``--dist-url``, and trailing ``KEY VALUE`` config overrides (keys: ``revvideo/config.py``).
``MODEL.WEIGHTS`` takes an official ``.pyth``, a checkpoint of this tool, or any file
``backbones.load_checkpoint`` reads (``MODEL.ARCH weights`` builds the architecture stored
in it). OUTPUT_DIR receives
``log.txt``, ``config.yaml``, ``metrics.json``, TensorBoard events, the checkpoints
``model_*.pth`` / ``model_final.pth`` (``last_checkpoint`` names the newest) and the
results (``results.md``, ``eval_results.json``). Without a GPU everything runs on the CPU,
several processes communicating through gloo. Problems with the config, the video lists or
the weights end with one message and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning
# threads slow a multi-threaded step down several-fold. Set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import revvideo  # noqa: E402  (first: pytorchvideo's torchvision import fix)
from detectron2.engine import default_setup  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from revvideo.engine import Trainer, evaluate, resolve_device  # noqa: E402
from revvideo.model import build_model  # noqa: E402
from revvideo.data import dataset_dir, read_split  # noqa: E402
from revvideo.multiview import format_results  # noqa: E402
from revvision import cli as command_line  # noqa: E402
from revvision.checkpointer import last_checkpoint  # noqa: E402
from revvision.config_files import merge_config  # noqa: E402

DEMO_CONFIG = "demo_video_revmvit.yaml"

logger = logging.getLogger("revvideo.train_video")


def build_parser() -> argparse.ArgumentParser:
    return command_line.train_parser(__doc__)


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def load_config(args):
    """The merged config of ``args`` (``args.config_file`` is a resolved path, see ``cli``)."""
    cfg = merge_config(revvideo.get_cfg(), args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup(args):
    cfg = load_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="revvideo")
    if cfg.CPU_THREADS > 0:
        torch.set_num_threads(cfg.CPU_THREADS)
    elif cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # share the cores between the processes on this machine
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    if cfg.MODEL.DEVICE == "cpu":
        logger.info("Running on the CPU with %d thread(s) per process", torch.get_num_threads())
    return cfg


def report(cfg, results) -> None:
    """Keep the final table (already logged by ``evaluate``) in OUTPUT_DIR/results.md."""
    if comm.is_main_process() and results and cfg.OUTPUT_DIR:
        with PathManager.open(os.path.join(cfg.OUTPUT_DIR, "results.md"), "w") as f:
            f.write(format_results(results, cfg) + "\n")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        weights = last_checkpoint(cfg.OUTPUT_DIR) if args.resume else None  # None: MODEL.WEIGHTS
        if weights:
            logger.info(f"--resume: evaluating {weights}")
        model = build_model(cfg, weights=weights).to(resolve_device(cfg))
        results = evaluate(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    report(cfg, results)
    return results


def check_inputs(cfg, args) -> None:
    """Fail before any worker starts if the solver settings, a video list or the weights
    are unusable."""
    if not args.eval_only:
        revvideo.config.check_solver(cfg, args.num_gpus)
    dataset_dir(cfg)  # generates the synthetic data, once here rather than in every worker
    if not args.eval_only:
        read_split(cfg, cfg.DATA.TRAIN_SPLIT)
    if args.eval_only or cfg.TEST.ENABLE:
        read_split(cfg, cfg.DATA.TEST_SPLIT)
    if not (args.eval_only and args.resume and last_checkpoint(cfg.OUTPUT_DIR)):
        command_line.check_weights(cfg.MODEL.WEIGHTS,
                                   read=args.num_gpus * args.num_machines > 1)


def cli(argv=None):
    """The command line (tools/train_video.py, revvision-train-video)."""
    command_line.train_command(argv, parse_args, DEMO_CONFIG, "video", load_config,
                               check_inputs, main)


if __name__ == "__main__":
    cli()
