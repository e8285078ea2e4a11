"""Parameter and FLOP counts: the fvcore protocol of the papers, incl. fused attention."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones.flops import count_flops, count_params

pytest.importorskip("fvcore")

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
FULL_SIZE = [("rev_vit_s", "REV_VIT_S"), ("rev_vit_b", "REV_VIT_B"),
             ("rev_mvit_b", "REV_MVIT_B_16_CONV"), ("rev_mvit_b_16x4", "REV_MVIT_B_16x4_CONV")]


@pytest.fixture(scope="module")
def stats():
    path = GOLDEN / "full_size_stats.json"
    if not path.is_file():
        pytest.skip(f"golden files not found at {GOLDEN}")
    return json.loads(path.read_text())


class Attention(nn.Module):
    def __init__(self, fused):
        super().__init__()
        self.fused = fused
        self.proj = nn.Linear(16, 16)

    def forward(self, x):  # x: (B, heads, N, d)
        q, k, v = x, x[:, :, :5], x[:, :, :5] * 2
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(out)

    @property
    def cfg(self):
        return None


@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")
def test_fused_attention_counts_as_its_two_matmuls():
    from fvcore.nn import FlopCountAnalysis

    x = torch.randn(1, 3, 7, 16)  # count_flops feeds one (1, 3, *input_size) sample
    explicit = FlopCountAnalysis(Attention(False), (x,)).unsupported_ops_warnings(False).total()
    assert explicit == 3 * 7 * 5 * 16 * 2 + 3 * 7 * 16 * 16  # q@k^T, attn@v, proj
    assert round(count_flops(Attention(True), (7, 16)) * 1e9) == explicit


def test_tiny_vit_matches_the_analytic_count():
    model = backbones.build("rev_vit_s", embed_dim=32, num_heads=2, depth=3, input_size=(32, 32),
                            patch_kernel=(8, 8), patch_stride=(8, 8), num_classes=10).train()
    n, c, classes = 16, 32, 10
    patch = n * c * 3 * 8 * 8
    per_layer = (4 * n * c * c        # q, k, v, proj
                 + 2 * n * n * c       # q @ k^T, attn @ v
                 + 2 * n * c * 4 * c   # MLP
                 + 2 * 5 * n * c)      # two affine LayerNorms (fvcore: 5 per element)
    final = 5 * n * 2 * c + 2 * c * classes
    assert round(count_flops(model) * 1e9) == patch + 3 * per_layer + final
    assert model.training  # mode restored
    assert count_params(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,official", FULL_SIZE)
def test_full_size_params_match_official(stats, name, official):
    with torch.device("meta"):
        model = backbones.build(name)
    assert count_params(model) == stats[official]["params"]


def _check_gflops(stats, name, official):
    got = count_flops(backbones.build(name))
    want = stats[official]["gflops_test_input"]
    assert abs(got / want - 1) <= 0.01, (got, want)


def test_full_size_gflops_rev_vit_s(stats):
    _check_gflops(stats, "rev_vit_s", "REV_VIT_S")


@pytest.mark.slow
@pytest.mark.parametrize("name,official", FULL_SIZE[1:])
def test_full_size_gflops(stats, name, official):
    _check_gflops(stats, name, official)


def test_missing_fvcore_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    model = backbones.build("rev_vit_s", embed_dim=16, num_heads=2, depth=1, input_size=(16, 16),
                            patch_kernel=(8, 8), patch_stride=(8, 8))
    with pytest.raises(ImportError, match="pip install fvcore"):
        count_flops(model)


def test_fvcore_registration_is_additive_and_idempotent(monkeypatch):
    import importlib

    from backbones.flops import SDPA, register_fvcore_handles, sdpa_flop_jit

    handles = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
    monkeypatch.delitem(handles, SDPA, raising=False)
    before = dict(handles)
    register_fvcore_handles()
    register_fvcore_handles()
    assert handles == {**before, SDPA: sdpa_flop_jit}

    def users_own(inputs, outputs):
        return 1

    monkeypatch.setitem(handles, SDPA, users_own)
    register_fvcore_handles()
    assert handles[SDPA] is users_own


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                            "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("backbone,net", [("build_rev_mvit_fpn_backbone", "bottom_up"),
                                          ("build_rev_vit_simple_fpn_backbone", "net")])
def test_detectron2_analysis_counts_the_backbone_fully(backbone, net):
    """Detectron2's own FLOP tools, on a revdet detector, count fused attention: the
    detector's bottom-up network counts what ``count_flops`` counts for it alone."""
    pytest.importorskip("detectron2")
    from detectron2.modeling import build_model
    from detectron2.utils.analysis import FlopCountAnalysis, flop_count_operators

    from tests.revdet_tiny import tiny_cfg  # imports revdet, which registers the handle

    model = build_model(tiny_cfg(backbone)).eval()
    inputs = [{"image": torch.rand(3, 64, 64) * 255}]  # 64 is a multiple of the padding: 64x64 in
    analysis = FlopCountAnalysis(model, inputs).unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    in_detector = analysis.by_module()[f"model.backbone.{net}"]
    assert in_detector == round(count_flops(getattr(model.backbone, net), (64, 64)) * 1e9)
    assert "aten::scaled_dot_product_attention" not in analysis.unsupported_ops()
    by_op = flop_count_operators(model, inputs)
    assert by_op["scaled_dot_product_attention"] > 0
    assert sum(by_op.values()) == pytest.approx(analysis.total() / 1e9)
