"""Train or evaluate Mask R-CNN with a Rev-MViT / Rev-ViT (or twin) backbone on Detectron2.

    python tools/train_det.py                                  # the built-in demo
    python tools/train_det.py --config coco_revmvit.yaml --num-gpus 8
    python tools/train_det.py --config FILE --resume           # continue in OUTPUT_DIR
    python tools/train_det.py --config FILE --eval-only MODEL.WEIGHTS output/x/model_final.pth
    python tools/train_det.py --config FILE --num-machines 2 --machine-rank 0 \\
        --dist-url tcp://host:port  [KEY VALUE ...]

The same command is ``revvision-train-det`` or ``python -m revvision.train_det``.
``--config`` (or ``--config-file``) takes a YAML path or the name of one of revvision's
configs (``coco_revmvit``, ``coco_revmvit.yaml``, ``configs/coco_revmvit.yaml``) from any
directory; without it the demo (``demo_shapes_revmvit.yaml``) runs. Trailing ``KEY VALUE``
pairs override the config. ``MODEL.WEIGHTS`` takes an official ImageNet ``.pyth``
(converted on the fly) or a revvision / Detectron2 checkpoint. OUTPUT_DIR receives the
log, ``config.yaml``, ``metrics.json``, TensorBoard events, checkpoints and the COCO
results. Without a GPU training runs on the CPU, several processes communicating through
gloo. Problems with the config, data or weights end with one message and exit status 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning
# threads slow a multi-threaded step down several-fold. Set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import revdet  # noqa: E402  (registers the backbones, datasets and patches)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_setup  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402
from revdet import shapes  # noqa: E402
from revdet.checkpoint import RevDetCheckpointer  # noqa: E402
from revvision.checkpointer import last_checkpoint  # noqa: E402
from revdet.data import check_datasets  # noqa: E402
from revdet.engine import Trainer, ap_table, visualize  # noqa: E402
from revvision import cli as command_line  # noqa: E402
from revvision.config_files import merge_config  # noqa: E402

DEMO_CONFIG = "demo_shapes_revmvit.yaml"

logger = logging.getLogger("revdet.train_det")


def build_parser() -> argparse.ArgumentParser:
    return command_line.train_parser(__doc__)


def load_config(args):
    """The merged config of ``args`` (``args.config_file`` is a resolved path, see ``cli``)."""
    return merge_config(revdet.add_revdet_config(get_cfg()), args.config_file, args.opts)


def setup(args):
    cfg = load_config(args)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    if not cfg.MODEL.DEVICE.startswith("cuda"):
        local = max(comm.get_local_size(), 1)
        if local > 1:  # share the cores between the processes on this machine
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        logger.info("Running on the CPU (%s) with %d thread(s) per process",
                    cfg.SOLVER.AMP.DTYPE if cfg.SOLVER.AMP.ENABLED else "float32",
                    torch.get_num_threads())
    shapes.register_shapes_from_config(cfg)
    return cfg


def report(cfg, model, results) -> None:
    if not comm.is_main_process() or not results:
        return
    table = ap_table(results)
    print("\nCOCO AP (%s):\n%s\n" % (", ".join(cfg.DATASETS.TEST), table), flush=True)
    with PathManager.open(os.path.join(cfg.OUTPUT_DIR, "results.md"), "w") as f:
        f.write(table + "\n")
    if cfg.TEST.VIS_IMAGES > 0 and cfg.DATASETS.TEST:
        out = os.path.join(cfg.OUTPUT_DIR, "vis")
        paths = visualize(cfg, model, cfg.DATASETS.TEST[0], out, cfg.TEST.VIS_IMAGES,
                          cfg.TEST.VIS_SCORE_THRESH)
        print(f"Wrote {len(paths)} prediction images to {out}/", flush=True)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        RevDetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        report(cfg, model, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if results is None and comm.is_main_process():
        results = getattr(trainer, "_last_eval_results", None)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    report(cfg, model, results)
    return results


def check_inputs(cfg, args) -> None:
    """Fail before any worker starts if the solver settings, the data or the weights are
    unusable."""
    if not args.eval_only:
        revdet.config.check_solver(cfg, args.num_gpus * args.num_machines)
    shapes.register_shapes_from_config(cfg)
    shapes.generate_used(cfg)  # the synthetic data, once here rather than in every worker
    used = list(cfg.DATASETS.TEST) if args.eval_only else \
        list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_datasets(used)
    if not (args.resume and last_checkpoint(cfg.OUTPUT_DIR)):  # then MODEL.WEIGHTS is loaded
        command_line.check_weights(cfg.MODEL.WEIGHTS,
                                   read=args.num_gpus * args.num_machines > 1)


def cli(argv=None):
    """The command line (tools/train_det.py, revvision-train-det)."""
    command_line.train_command(argv, build_parser().parse_args, DEMO_CONFIG, "detection",
                               load_config, check_inputs, main)


if __name__ == "__main__":
    cli()
