"""Shared helpers: tiny versions of every zoo architecture, fast enough for CPU tests."""

from pathlib import Path

import pytest
import torch

import backbones

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"

_TINY_MVIT = dict(embed_dim=8, num_heads=1, dim_mul=[[1, 2.0], [3, 2.0]],
                  head_mul=[[1, 2.0], [3, 2.0]], pool_q_stride=[[1, 1, 2, 2], [3, 1, 2, 2]])

TINY = {
    "vit": ("vit_s", dict(embed_dim=32, num_heads=2, input_size=(32, 32), patch_kernel=(8, 8),
                          patch_stride=(8, 8))),
    "mvit": ("mvit_b", dict(_TINY_MVIT, input_size=(32, 32), pool_kv_stride_adaptive=[1, 4, 4])),
    "mvit_video": ("mvit_b_16x4", dict(_TINY_MVIT, input_size=(4, 32, 32),
                                       pool_kv_stride_adaptive=[1, 4, 4], head_dropout=0.0)),
}


def tiny_model(kind: str, reversible: bool = True, depth: int = 6, **overrides):
    """A tiny zoo model (``kind`` in TINY) with the code paths of the full-size one."""
    name, base = TINY[kind]
    name = backbones.zoo.variant(name, reversible)
    return backbones.build(name, **{**base, "depth": depth, "num_classes": 5, **overrides})


def tiny_input(model, batch: int = 2, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, *model.cfg.input_size)
    return torch.randn(shape, generator=g, dtype=dtype)


@pytest.fixture(scope="session")
def golden_dir():
    if not GOLDEN.is_dir():
        pytest.skip(f"golden files not found at {GOLDEN}")
    return GOLDEN
