#!/usr/bin/env python
"""Train or evaluate a Rev-MViT video classifier (Kinetics, or the built-in synthetic set).

    # the demo: synthetic shapes, a tiny Rev-MViT, trains and evaluates in minutes on a CPU
    python tools/train_video.py --config configs/demo_video_revmvit.yaml

    # Kinetics-400 with the official recipe, 8 processes (GPUs) on one machine
    python tools/train_video.py --config configs/kinetics_revmvit_b_16x4.yaml --num-gpus 8 \\
        DATA.PATH_TO_DATA_DIR /data/kinetics400

    # evaluate the released checkpoint with the official protocol (5 clips x 1 crop)
    python tools/train_video.py --config configs/kinetics_revmvit_b_16x4.yaml --eval-only \\
        MODEL.WEIGHTS REV_MVIT_B_16x4.pyth DATA.PATH_TO_DATA_DIR /data/kinetics400

    # continue an interrupted run from OUTPUT_DIR/last_checkpoint
    python tools/train_video.py --config configs/demo_video_revmvit.yaml --resume

Options are Detectron2's (``--config``/``--config-file``, ``--eval-only``, ``--resume``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``) followed by
``KEY VALUE`` config overrides (see ``revvideo/config.py``). OUTPUT_DIR receives
``log.txt``, ``config.yaml``, ``metrics.json``, TensorBoard events, the checkpoints
``model_*.pth`` / ``model_final.pth`` and ``eval_results.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import revvideo  # noqa: E402  (first: pytorchvideo's torchvision import fix)
import torch  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from revvideo.engine import Trainer, evaluate, resolve_device  # noqa: E402
from revvideo.model import build_model  # noqa: E402


def setup(args):
    cfg = revvideo.get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="revvideo")
    if cfg.CPU_THREADS > 0:
        torch.set_num_threads(cfg.CPU_THREADS)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = build_model(cfg).to(resolve_device(cfg))
        return evaluate(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    # Detectron2's flag is --config-file; --config is accepted as its abbreviation anyway,
    # listed here for the help text.
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        default=argparse.SUPPRESS, help="same as --config-file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
