#!/usr/bin/env python
"""Convert Rev-ViT / Rev-MViT checkpoints between the official, mmpretrain and revvision formats.

    python tools/convert_checkpoint.py REV_VIT_B.pyth rev_vit_b.pth                 # -> revvision
    python tools/convert_checkpoint.py rev_vit_b.pth REV_VIT_B.pyth --to official   # and back
    python tools/convert_checkpoint.py revvit-small.pth rev_vit_s.pth              # mmpretrain ->
    python tools/convert_checkpoint.py tiny.pth tiny_rev.pth --set num_heads=2      # heads not in file

The input format is detected (see ``backbones.checkpoint``). The weights are loaded into
the architecture the file describes (``--name`` / ``--set`` as for ``load_pretrained``),
so a file whose keys or shapes do not fit is rejected rather than converted. Outputs:

* ``revvision``: ``{"model": state_dict, "model_config": plain dict}``, plus the source's
  ``epoch`` and, from an official file, its config string as ``official_cfg``;
* ``official``: ``{"model_state", "cfg"[, "epoch"]}`` with official key names, loadable by
  SlowFast; ``cfg`` is the original config string when known, else the architecture part
  of a SlowFast config generated from the model config;
* ``mmpretrain``: a bare state dict with mmpretrain names and fused ``qkv`` (Rev-ViT only).

Conversions are exact: tensors are copied, never recomputed, and official -> revvision ->
official reproduces the original ``model_state`` and ``cfg``. Optimizer state is dropped.
Files are read with ``torch.load(weights_only=True)`` and written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Dict, List, Optional

import yaml

from backbones.checkpoint import (CheckpointError, atomic_save, model_from_checkpoint,
                                  read_checkpoint, save_checkpoint)
from backbones.errors import UserError
from backbones.mmpretrain import to_mmpretrain_keys
from backbones.mvit import ModelConfig
from backbones.official import config_to_official, to_official_keys
from revvision.cli import add_debug_argument, describe, run

FORMATS = ("revvision", "official", "mmpretrain")
TUPLE_FIELDS = {f.name: True for f in dataclasses.fields(ModelConfig) if isinstance(f.default, tuple)}


def parse_overrides(items: List[str]) -> Dict[str, object]:
    """``["num_heads=2", "input_size=[256,256]"]`` -> ``{"num_heads": 2, "input_size": (256, 256)}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)
        field = TUPLE_FIELDS.get(key)
        out[key] = tuple(parsed) if field and isinstance(parsed, list) else parsed
    return out


def convert(src: str, dst: str, to: str = "revvision", name: Optional[str] = None,
            overrides: Optional[Dict[str, object]] = None) -> None:
    if to not in FORMATS:
        raise ValueError(f"unknown output format {to!r}; choose from {FORMATS}")
    overrides = dict(overrides or {})
    ckpt = read_checkpoint(src)
    model = model_from_checkpoint(ckpt, name, **overrides)  # strict: every key must fit
    state = model.state_dict()
    unchanged = ckpt.config is not None and model.cfg == ckpt.config
    official_cfg = ckpt.extra.get("official_cfg") if unchanged else None
    epoch = {"epoch": ckpt.extra["epoch"]} if "epoch" in ckpt.extra else {}

    if to == "revvision":
        extra = dict(epoch)
        if official_cfg is not None:
            extra["official_cfg"] = official_cfg
        save_checkpoint(dst, model, **extra)
    elif to == "official":
        cfg = official_cfg if official_cfg is not None else yaml.safe_dump(
            config_to_official(model.cfg), sort_keys=True)
        atomic_save({**epoch, "model_state": to_official_keys(state), "cfg": cfg}, dst)
    else:
        if model.cfg.pool_q_stride or not model.cfg.reversible:
            raise ValueError("mmpretrain implements only the reversible ViT (Rev-ViT); "
                             f"{src} holds a different model")
        atomic_save(to_mmpretrain_keys(state), dst)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("src", help="official .pyth, mmpretrain .pth or revvision checkpoint")
    p.add_argument("dst", help="output file")
    p.add_argument("--to", choices=FORMATS, default="revvision", help="output format")
    p.add_argument("--name", help="zoo architecture for files that carry no config "
                                  "(bare state dicts; mmpretrain heads)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="ModelConfig override, e.g. num_heads=2 or input_size=[256,256] "
                        "(position embeddings are resized)")
    add_debug_argument(p)
    args = p.parse_args(argv)
    try:
        convert(args.src, args.dst, args.to, args.name, parse_overrides(args.set))
    except (CheckpointError, FileNotFoundError, ValueError, KeyError, TypeError) as e:
        raise UserError(describe(e)) from e  # exit status 2, without a traceback
    print(f"wrote {args.dst} ({args.to} format)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
