#!/usr/bin/env python
"""Classify video files with a trained or released video model: top-5 classes by name.

    python tools/demo_video.py --config configs/kinetics_revmvit_b_16x4.yaml \\
        --weights REV_MVIT_B_16x4.pyth clip.mp4
    # the `make demo-video` model; --timeline also scores consecutive clips and plots them
    python tools/demo_video.py --config configs/demo_video_revmvit.yaml \\
        --weights output/demo_video_revmvit/model_final.pth --timeline --json preds.json videos/

Inputs are video files, folders or glob patterns. Each video is scored with the evaluation
protocol of the config (``revvideo.multiview.TestViews``: ``TEST.NUM_ENSEMBLE_VIEWS`` clips
spread over the video x ``TEST.NUM_SPATIAL_CROPS`` crops, softmax scores summed; shown as
their mean). ``--timeline`` also scores consecutive clips of ``DATA.NUM_FRAMES`` x
``DATA.SAMPLING_RATE`` frames (at ``DATA.TARGET_FPS``) from start to end, one center crop
each, and writes a plot of the top classes' scores over time to ``--output``. ``--json``
writes every prediction. Class names: ``--labels FILE`` (one per line), else the synthetic
demo's six names, or the Kinetics-400 names for 400 classes (torchvision's list). Trailing
``KEY VALUE`` pairs override the config; ``--weights`` (a file or an ``http(s)://`` URL) sets
``MODEL.WEIGHTS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/train_video.py

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout

import torch  # noqa: E402

import revvideo  # noqa: E402  (first: pytorchvideo's torchvision import fix)
from backbones.errors import UserError  # noqa: E402
from revvideo.model import build_model  # noqa: E402
from revvideo.multiview import TestViews  # noqa: E402
from revvision.cli import check_weights, run  # noqa: E402
from revvision.config_files import merge_config, resolve_config  # noqa: E402
from revvision.inputs import (VIDEO_EXTENSIONS, demo_parser, expand_inputs, open_video,  # noqa: E402
                              output_file, refuse_overwrite, split_config_overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "video config file or name, e.g. kinetics_revmvit_b_16x4")
    parser.add_argument("--weights", metavar="FILE|URL", help="checkpoint (sets MODEL.WEIGHTS)")
    parser.add_argument("--labels", metavar="FILE", help="class names, one per line")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes shown (5)")
    parser.add_argument("--timeline", action="store_true",
                        help="score consecutive clips and plot the top classes over time")
    parser.add_argument("--output", metavar="DIR", default="output/demo_video",
                        help="folder of the timeline plots (default output/demo_video)")
    parser.add_argument("--json", metavar="FILE", help="write the predictions as JSON")
    parser.add_argument("inputs", nargs="+", metavar="VIDEO",
                        help="video files, folders or glob patterns, then KEY VALUE config "
                             "overrides")
    return parser


def setup_cfg(args):
    cfg = merge_config(revvideo.get_cfg(), resolve_config(args.config_file), args.opts)
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    check_weights(cfg.MODEL.WEIGHTS, required="give --weights FILE (e.g. "
                  "output/demo_video_revmvit/model_final.pth after `make demo-video`)")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def class_names(cfg, labels_file: str = None) -> List[str]:
    """``--labels``, else the synthetic demo's names, else Kinetics-400's, else numbers."""
    count = cfg.MODEL.NUM_CLASSES
    if labels_file:
        try:
            with open(labels_file) as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read --labels {labels_file}: {e.strerror}") from None
        if len(names) != count:
            raise UserError(f"--labels {labels_file} has {len(names)} names but the model has "
                            f"{count} classes")
        return names
    if cfg.DATA.DATASET == "synthetic_shapes":
        from revvideo.synthetic import CLASSES

        return list(CLASSES)
    if count == 400:  # Kinetics-400, alphabetical: the released checkpoint's order
        from torchvision.models.video import R3D_18_Weights

        return list(R3D_18_Weights.KINETICS400_V1.meta["categories"])
    return [f"class {i}" for i in range(count)]


def decode(path: str):
    """All frames of ``path`` as a ``(3, F, H, W)`` uint8 tensor, and its frame rate."""
    import av

    frames = []
    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0)
        try:
            for frame in container.decode(stream):
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
        except av.FFmpegError as e:
            raise UserError(f"cannot decode video {path} after {len(frames)} frame(s): "
                            f"{e}") from None
    if not frames:
        raise UserError(f"{path} has no decodable video frames")
    return torch.stack(frames).permute(3, 0, 1, 2), fps


class ConsecutiveClips(TestViews):
    """One center crop of each consecutive clip from the start of the video to its end
    (the clip length and frame stride of the test views). Build with
    ``ConsecutiveClips.from_config(cfg, num_clips=1, num_crops=1)``."""

    def clip_length(self, fps: float) -> float:
        """Frames per clip, as ``official_clip_indices`` computes it."""
        return max(1.0, self.sampling_rate * self.num_frames / self.target_fps * fps)

    def frame_indices(self, num_video_frames: int, fps: float) -> List[torch.Tensor]:
        size = self.clip_length(fps)
        count = max(1, int(num_video_frames // size))
        return [torch.linspace(i * size, (i + 1) * size - 1, self.num_frames)
                .clamp(0, num_video_frames - 1).long() for i in range(count)]


@torch.no_grad()
def scores(model, views: torch.Tensor, batch: int) -> torch.Tensor:
    """Softmax scores ``(V, K)`` of normalised views ``(V, C, T, H, W)``."""
    device = next(model.parameters()).device
    return torch.cat([torch.softmax(model(chunk.to(device)).float(), -1).cpu()
                      for chunk in views.split(batch)])


def ranked(probs: torch.Tensor, names: Sequence[str], k: int) -> List[Dict]:
    top = probs.topk(min(k, len(names)))
    return [{"index": i, "label": names[i], "score": round(s, 6)}
            for s, i in zip(top.values.tolist(), top.indices.tolist())]


def plot_timeline(path: str, title: str, times: Sequence[float], probs: torch.Tensor,
                  names: Sequence[str], k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for i in probs.mean(0).topk(min(k, len(names))).indices.tolist():
        ax.plot(times, probs[:, i].numpy(), marker="o" if len(times) < 30 else None,
                label=names[i])
    ax.set(xlabel="time (s, clip centre)", ylabel="score", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def classify(model, cfg, path: str, names: Sequence[str], args) -> Dict:
    video, fps = decode(path)
    fps = fps or float(cfg.DATA.TARGET_FPS)
    views = TestViews.from_config(cfg)
    probs = scores(model, views({"video": video, "fps": fps})["video"], cfg.TEST.BATCH_SIZE)
    result = {"path": path, "frames": video.shape[1], "fps": fps, "views": len(probs),
              "top": ranked(probs.mean(0), names, args.top_k)}
    print(f"{path} ({video.shape[1]} frames at {fps:.4g} fps, {len(probs)} views):")
    for n, entry in enumerate(result["top"], 1):
        print(f"  {n}. {entry['label']:<32} {entry['score']:.3f}")
    if args.timeline:
        clips = ConsecutiveClips.from_config(cfg, num_clips=1, num_crops=1)
        size = clips.clip_length(fps)
        per_clip = scores(model, clips({"video": video, "fps": fps})["video"], cfg.TEST.BATCH_SIZE)
        starts = [i * size / fps for i in range(len(per_clip))]
        plot = output_file(args.output, path, False, (), suffix="_timeline.png")
        plot_timeline(plot, os.path.basename(path), [s + size / fps / 2 for s in starts],
                      per_clip, names, args.top_k)
        result["timeline"] = {
            "clip_seconds": size / fps, "plot": plot,
            "clips": [{"start": round(s, 4), "end": round(s + size / fps, 4),
                       "top": ranked(p, names, args.top_k)} for s, p in zip(starts, per_clip)]}
        print(f"  timeline: {len(per_clip)} clips of {size / fps:.2f}s -> {plot}")
    return result


def main(argv=None) -> List[Dict]:
    args = build_parser().parse_args(argv)
    paths, args.opts = split_config_overrides(args.inputs)
    if not paths:
        raise UserError("give at least one video file, folder or pattern")
    paths = expand_inputs(paths, VIDEO_EXTENSIONS, "video")
    for path in paths:  # unreadable videos are named before the model is built
        open_video(path).close()
    if args.json:
        refuse_overwrite(args.json, paths)
    cfg = setup_cfg(args)
    names = class_names(cfg, args.labels)
    model = build_model(cfg).to(cfg.MODEL.DEVICE).eval()
    results = [classify(model, cfg, path, names, args) for path in paths]
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                       "videos": results}, f, indent=1)
    return results


if __name__ == "__main__":
    run(main)
