#!/usr/bin/env python
"""Run a revdet detector on your own images or video and draw what it finds.

    # the `make demo` model on images (files, folders or globs), drawn into out/
    python tools/demo_det.py --config configs/demo_shapes_revmvit.yaml \\
        --input photos/ extra/*.jpg --output out/ \\
        MODEL.WEIGHTS output/demo_shapes_revmvit/model_final.pth
    # one image to one file; a video to an annotated video (same frames, same rate)
    python tools/demo_det.py --config FILE --input street.jpg --output street_pred.png MODEL.WEIGHTS W
    python tools/demo_det.py --config FILE --video-input clip.mp4 --output clip_pred.mp4 MODEL.WEIGHTS W

As Detectron2's demo/demo.py: ``--config`` (or ``--config-file``), ``--input``,
``--video-input``, ``--output`` (a folder, or a file for a single input), ``--confidence-threshold``
and trailing ``KEY VALUE`` config overrides. ``MODEL.WEIGHTS`` is a checkpoint of
tools/train_det.py (or any file ``RevDetCheckpointer`` reads), a local path or an
``http(s)://`` URL. Boxes, masks and class names (from the metadata of the config's first test
dataset) are drawn with Detectron2's ``Visualizer``. Without ``--output`` the detections of each
image are printed only. Inputs are never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/train_det.py

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout

import torch  # noqa: E402

import revdet  # noqa: E402  (registers the backbones and datasets)
from backbones.errors import UserError  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from revdet import shapes  # noqa: E402
from revdet.checkpoint import RevDetCheckpointer  # noqa: E402
from revvision.cli import check_weights, run  # noqa: E402
from revvision.config_files import merge_config, resolve_config  # noqa: E402
from revvision.inputs import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, demo_parser,  # noqa: E402
                              expand_inputs, open_video, output_file, split_config_overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "revdet config file or name, e.g. demo_shapes_revmvit")
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="images: files, folders or glob patterns")
    parser.add_argument("--video-input", metavar="FILE", help="a video file (read with PyAV)")
    parser.add_argument("--output", metavar="PATH",
                        help="folder for the drawn results, or a file for a single input")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, metavar="SCORE",
                        help="minimum score of the drawn detections (default 0.5)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth")
    return parser


def setup_cfg(args):
    cfg = merge_config(revdet.add_revdet_config(get_cfg()), resolve_config(args.config_file),
                       args.opts)
    threshold = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    check_weights(cfg.MODEL.WEIGHTS, required="add MODEL.WEIGHTS FILE (e.g. "
                  "output/demo_shapes_revmvit/model_final.pth after `make demo`)")
    shapes.register_shapes_from_config(cfg)  # class names of the shapes datasets
    cfg.freeze()
    return cfg


class Predictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` (BGR image in, resized as at test time, instances
    out) with the weights loaded by ``RevDetCheckpointer``: safe loading, URLs, official
    backbone checkpoints."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        RevDetCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        names = cfg.DATASETS.TEST
        self.metadata = MetadataCatalog.get(names[0] if len(names) else "__unused")


def read_image(path: str):
    """The image as BGR uint8 (grayscale, palette and RGBA files converted), or a UserError."""
    from detectron2.data.detection_utils import read_image as d2_read_image

    try:
        return d2_read_image(path, format="BGR")
    except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated, corrupt
        raise UserError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def describe(instances, metadata) -> str:
    names = metadata.get("thing_classes", None)
    found = [f"{names[c] if names else c} {s:.2f}"
             for c, s in zip(instances.pred_classes.tolist(), instances.scores.tolist())]
    return ", ".join(found) if found else "nothing"


def run_images(predictor: Predictor, paths, targets) -> None:
    """Detect in each image; print what was found and draw it into ``targets`` (if any)."""
    from detectron2.utils.visualizer import ColorMode, Visualizer
    from PIL import Image
    from tqdm import tqdm

    for path, target in tqdm(list(zip(paths, targets)), disable=len(paths) == 1, unit="image"):
        image = read_image(path)
        start = time.perf_counter()
        instances = predictor(image)["instances"].to("cpu")
        seconds = time.perf_counter() - start
        tqdm.write(f"{path}: {len(instances)} instances in {seconds:.2f}s: "
                   f"{describe(instances, predictor.metadata)}")
        if target:
            drawn = Visualizer(image[:, :, ::-1], predictor.metadata,
                               instance_mode=ColorMode.IMAGE).draw_instance_predictions(instances)
            Image.fromarray(drawn.get_image()).save(target)


def run_video(predictor: Predictor, path: str, target: str) -> int:
    """Draw the detections on every frame of ``path`` into the video ``target`` (H.264, same
    frame rate and frame count); returns the number of frames."""
    import av
    from detectron2.utils.video_visualizer import VideoVisualizer
    from tqdm import tqdm

    visualizer = VideoVisualizer(predictor.metadata)
    frames = 0
    with open_video(path) as source:
        stream = source.streams.video[0]
        fps = stream.average_rate or 30
        sink = av.open(target, mode="w")
        try:
            out = sink.add_stream("libx264", rate=fps)
            # yuv420p needs even sides: an odd last row or column is dropped
            out.width, out.height = stream.width // 2 * 2, stream.height // 2 * 2
            out.pix_fmt = "yuv420p"
            for frame in tqdm(source.decode(stream), total=stream.frames or None, unit="frame",
                              desc=os.path.basename(path)):
                bgr = frame.to_ndarray(format="bgr24")
                instances = predictor(bgr)["instances"].to("cpu")
                drawn = visualizer.draw_instance_predictions(bgr[:, :, ::-1], instances).get_image()
                picture = av.VideoFrame.from_ndarray(
                    drawn[:out.height, :out.width].copy(), format="rgb24")
                sink.mux(out.encode(picture))
                frames += 1
            sink.mux(out.encode())
            sink.close()
        except BaseException as e:  # no half-written video is left behind
            sink.close()
            os.remove(target)
            if isinstance(e, av.FFmpegError):
                raise UserError(f"cannot decode video {path} after {frames} frame(s): "
                                f"{e}") from None
            raise
    if frames == 0:
        os.remove(target)
        raise UserError(f"{path} has no decodable video frames")
    print(f"{path}: {frames} frames drawn into {target}", flush=True)
    return frames


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input:  # trailing KEY VALUE pairs after --input's paths
        args.input, overrides = split_config_overrides(args.input)
        args.opts = overrides + args.opts
    if bool(args.input) == bool(args.video_input):
        parser.error("give either --input or --video-input")
    if args.video_input and not args.output:
        parser.error("--video-input needs --output (a video file or a folder)")
    # every input and output is checked before the model is built
    if args.video_input:
        open_video(args.video_input).close()
        target = output_file(args.output, args.video_input, True, VIDEO_EXTENSIONS, ".mp4")
    else:
        paths = expand_inputs(args.input, IMAGE_EXTENSIONS, "image")
        targets = [output_file(args.output, p, len(paths) == 1, IMAGE_EXTENSIONS)
                   if args.output else None for p in paths]
    predictor = Predictor(setup_cfg(args))
    if args.video_input:
        run_video(predictor, args.video_input, target)
    else:
        run_images(predictor, paths, targets)


if __name__ == "__main__":
    run(main)
