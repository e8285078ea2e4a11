"""Activation memory of reversible models does not grow with depth; their twins' does."""

import pytest
import torch

from backbones.memory import saved_tensor_meter
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
