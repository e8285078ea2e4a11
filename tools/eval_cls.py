#!/usr/bin/env python
"""Evaluate an image classifier checkpoint on an ImageFolder tree (ImageNet-1K protocol).

    python tools/eval_cls.py --weights REV_VIT_B.pyth --data /datasets/imagenet/val
    python tools/eval_cls.py --weights REV_MVIT_B.pyth --data imagenet/val --limit 1000
    python tools/eval_cls.py --weights revvit-small.pth --data imagenet/val --name rev_vit_s

``--data`` is a folder with one subfolder per class; class indices follow the sorted folder
names (the ImageNet synsets n01440764 ... for the released models), and their number must
equal the model's classes. ``--weights`` is any checkpoint ``backbones.load_pretrained``
reads (official ``.pyth``, mmpretrain, revvision), a file or an ``http(s)://`` URL (downloaded
once into the cache); the architecture comes from the file.

Protocol (official SlowFast ImageNet evaluation, one view per image): RGB -> resize the
short side to ``int(crop / 0.875)`` (256 for crop 224) with bicubic interpolation -> center
crop ``crop`` (the model's input size, 224 for the released models) -> ToTensor ->
normalize with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
Top-1/top-5 are computed on the logits (the official softmax does not change the ranking).

``--limit N`` evaluates N images spread evenly over the sorted file list (so every class
is represented), not the first N. An unreadable image stops the run with an error naming
the file; ``--skip-bad-images`` skips such files instead, with a warning each and their
count in the final table (the accuracies are then over the images that were read).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, Subset

import backbones
from backbones.checkpoint import CheckpointError
from backbones.errors import UserError
from revvision.cli import add_debug_argument, describe, run

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875  # DATA.IN_VAL_CROP_RATIO


class BadImageError(RuntimeError):
    pass


def eval_transform(crop: int = 224):
    """The official ImageNet evaluation transform for a ``crop`` x ``crop`` model input."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(int((1 / CROP_RATIO) * crop), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(crop),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class ImageFiles(Dataset):
    """``(image, label, index, error)`` per file; a file that cannot be read yields
    ``(None, label, index, message)`` so the main process decides (stop or skip)."""

    def __init__(self, samples: Sequence, transform):
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
            return None, label, index, f"{type(e).__name__}: {e}"
        return self.transform(image), label, index, None


def collate(batch):
    good = [b for b in batch if b[0] is not None]
    bad = [(b[2], b[3]) for b in batch if b[0] is None]
    images = torch.stack([b[0] for b in good]) if good else None
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, bad


def spread_indices(total: int, limit: Optional[int]) -> List[int]:
    """``limit`` indices spread evenly over ``range(total)`` (all of them without a limit)."""
    if limit is None or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


def evaluate(weights: str, data: str, limit: Optional[int] = None, batch_size: int = 64,
             workers: int = 4, device: Optional[str] = None, name: Optional[str] = None,
             crop: Optional[int] = None, skip_bad_images: bool = False,
             progress: bool = True) -> Dict[str, object]:
    """Run the evaluation; returns ``{"images", "skipped", "top1", "top5", "k", ...}`` (in %)."""
    from torchvision.datasets import ImageFolder

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = backbones.load_pretrained(weights, name)
    if model.cfg.is_video:
        raise ValueError(f"{weights} holds a video model (input {model.cfg.input_size}); "
                         "eval_cls evaluates image classifiers")
    model.eval().to(device)
    crop = crop or model.cfg.input_size[-1]

    if not Path(data).is_dir():
        raise FileNotFoundError(f"data folder not found: {data}")
    folder = ImageFolder(data, allow_empty=True)
    classes = len(folder.classes)
    if classes != model.cfg.num_classes:
        raise ValueError(f"{data} has {classes} class folders but the model has "
                         f"{model.cfg.num_classes} classes")
    if not folder.samples:
        raise FileNotFoundError(f"no images found under {data}")
    indices = spread_indices(len(folder.samples), limit)
    dataset = Subset(ImageFiles(folder.samples, eval_transform(crop)), indices)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=device.startswith("cuda"))
    k = min(5, classes)
    seen = correct1 = correct5 = skipped = 0
    start = time.time()
    bar = _progress(loader, progress)
    with torch.inference_mode():
        for images, labels, bad in bar:
            for index, error in bad:
                path = folder.samples[index][0]
                if not skip_bad_images:
                    raise BadImageError(f"cannot read image {path}: {error} "
                                        "(--skip-bad-images skips such files)")
                warnings.warn(f"skipping unreadable image {path}: {error}")
                skipped += 1
            if images is None:
                continue
            logits = model(images.to(device, non_blocking=True)).float().cpu()
            top = logits.topk(k, dim=1).indices
            hits = top == labels[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            seen += len(labels)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(top1=f"{100 * correct1 / seen:.2f}", top5=f"{100 * correct5 / seen:.2f}")
    if seen == 0:
        raise BadImageError(f"none of the {len(indices)} images under {data} could be read")
    return {"weights": str(weights), "images": seen, "skipped": skipped, "k": k,
            "top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen,
            "crop": crop, "resize": int((1 / CROP_RATIO) * crop), "seconds": time.time() - start}


def _progress(loader, enabled: bool):
    if not enabled:
        return loader
    try:
        from tqdm import tqdm
    except ImportError:
        return loader
    return tqdm(loader, total=len(loader), unit="batch", desc="eval", dynamic_ncols=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--weights", required=True,
                   help="checkpoint file (.pyth, mmpretrain .pth, revvision) or http(s):// URL")
    p.add_argument("--data", required=True, help="ImageFolder root: one subfolder per class")
    p.add_argument("--limit", type=int, help="evaluate N images spread over the data set")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="data loading processes")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--name", help="zoo architecture, for files that carry no config")
    p.add_argument("--crop-size", type=int, help="default: the model's input size (224)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images (counted) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(p)
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    try:
        r = evaluate(args.weights, args.data, args.limit, args.batch_size, args.workers,
                     args.device, args.name, args.crop_size, args.skip_bad_images,
                     progress=not args.no_progress)
    except (CheckpointError, BadImageError, FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(describe(e)) from e  # exit status 2, without a traceback
    print(tabulate(
        [[Path(r["weights"]).name, r["images"], r["skipped"], f"{r['top1']:.2f}", f"{r['top5']:.2f}",
          f"resize {r['resize']} bicubic, crop {r['crop']}"]],
        ["weights", "images", "skipped", "top-1 %", f"top-{r['k']} %", "protocol"],
        tablefmt="pipe", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
