"""Activation memory of reversible models does not grow with depth; their twins' does."""

import pytest
import torch

import backbones
from measure import LiveTensorPeak, saved_tensor_meter
from conftest import tiny_input, tiny_model


def _activation_bytes(model, x):
    with saved_tensor_meter() as meter:
        loss = model(x).sum()
    loss.backward()
    return meter.total_bytes


@pytest.mark.parametrize("kind", ["vit", "mvit"])
def test_reversible_activation_memory_is_depth_independent(kind):
    torch.manual_seed(0)
    depths = (4, 16) if kind == "vit" else (6, 18)
    x = tiny_input(tiny_model(kind, depth=depths[0]), batch=4)
    rev = [_activation_bytes(tiny_model(kind, depth=d, drop_path_rate=0.1).train(), x)
           for d in depths]
    plain = [_activation_bytes(tiny_model(kind, reversible=False, depth=d).train(), x)
             for d in depths]
    if kind == "vit":
        assert rev[1] <= 1.05 * rev[0], rev
        assert plain[1] >= 3.5 * plain[0], plain  # linear in depth: 16/4 blocks
        assert rev[0] < plain[0] / 2
    else:  # only the stage transitions store activations; their number is fixed
        assert rev[1] <= 1.05 * rev[0], rev
        assert plain[1] >= 1.8 * plain[0], plain


def test_meter_counts_shared_storage_once():
    x = torch.randn(100, requires_grad=True)
    with saved_tensor_meter() as meter:
        y = (x * x).sum()  # saves x twice
    y.backward()
    assert meter.total_bytes == x.nbytes


@pytest.mark.parametrize("kind", ["mvit", "mvit_video"])
def test_recomputed_transitions_store_no_activations(kind):
    """With ``recompute_transitions`` the transitions keep nothing beyond their input (the
    previous segment's output, already kept): what they stored was most of Rev-MViT's."""
    def saved(recompute, depth=6):
        torch.manual_seed(0)
        model = tiny_model(kind, depth=depth, drop_path_rate=0.1,
                           recompute_transitions=recompute).train()
        return _activation_bytes(model, tiny_input(model, batch=4))

    stored, recomputed = saved(False), saved(True)
    assert recomputed < 0.4 * stored, (recomputed, stored)
    assert saved(True, depth=12) <= 1.05 * recomputed


# --------------------------------------------------- with gradients already present

def _narrow_vit_b(depth, reversible=True):
    """ViT-B's layout (224x224, patch 16) at width 96: activations still dominate the
    per-block parameters, as at full width, and a step takes about a second."""
    torch.manual_seed(0)
    name = "rev_vit_b" if reversible else "vit_b"
    return backbones.build(name, embed_dim=96, num_heads=2, depth=depth, num_classes=10).train()


def accumulating_peak(model, x) -> int:
    """Live tensor bytes of one training step whose parameters already hold gradients (a
    second micro-batch), above the model, its ``.grad`` and the input."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with LiveTensorPeak() as meter:
        model(x).square().mean().backward()
    return meter.peak_bytes


def test_accumulating_step_memory_is_flat_in_depth():
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rev4, rev16 = (accumulating_peak(_narrow_vit_b(d), x) for d in (4, 16))
    twin16 = accumulating_peak(_narrow_vit_b(16, reversible=False), x)
    assert rev16 <= 1.15 * rev4, (rev4, rev16)
    assert rev16 <= 0.35 * twin16, (rev16, twin16)


def test_live_tensor_peak_counts_fresh_storages_until_freed():
    kept = torch.zeros(1000)  # allocated before: not counted, nor are in-place results
    with LiveTensorPeak() as meter:
        a = torch.ones(1000)  # 4000 bytes
        b = a[10:]  # a view of a: nothing new
        kept.add_(1)
        del a, b  # freed
        c = torch.ones(500) * 2  # the ones (2000) and the product (2000) overlap
        live_at_end = meter.live_bytes
    assert meter.peak_bytes == 4000
    assert live_at_end == 2000 and c.numel() == 500
