"""The zoo: architectures, parameter counts, stage maps, input sizes and input errors."""

import re

import pytest
import torch

import backbones
from backbones.blocks import StageTransition
from backbones.mvit import plan_layers
from conftest import tiny_input, tiny_model

OFFICIAL_PARAMS = {"rev_vit_s": 22_434_664, "rev_vit_b": 87_335_656,
                   "rev_mvit_b": 39_689_320, "rev_mvit_b_16x4": 34_963_120}


def test_list_models_has_every_model_and_twin():
    assert backbones.list_models() == sorted(
        ["rev_vit_s", "rev_vit_b", "rev_vit_l", "rev_mvit_b", "rev_mvit_b_16x4",
         "vit_s", "vit_b", "vit_l", "nonrev_mvit_b", "nonrev_mvit_b_16x4"])


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_parameter_counts_equal_the_official_models(name):
    with torch.device("meta"):
        model = backbones.build(name)
    assert model.cfg.num_classes == (400 if name.endswith("16x4") else 1000)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


def _golden_layers(golden_dir, variant):
    """Parse the official per-layer table (full_size_layers.txt) of one model."""
    text = (golden_dir / "full_size_layers.txt").read_text()
    block = text.split(f"== {variant} ")[1].split("==")[0]
    rows = []
    for line in block.splitlines():
        m = re.match(r"\s*(\d+) (\w+)\s+F\.thw=\S+ \S+ \S+ dim_in=(\d+) dim_out=(\d+) heads=(\d+) "
                     r"pool_q k(\S+|\([^)]*\)) s(\S+|\([^)]*\)) pool_kv k(None|\([^)]*\)) "
                     r"s(None|\([^)]*\)).* dp=([\d.]+)", line)
        if m:
            rows.append(m.groups())
    return rows


@pytest.mark.parametrize("name,variant", [("rev_mvit_b", "REV_MVIT_B_16_CONV"),
                                          ("rev_mvit_b_16x4", "REV_MVIT_B_16x4_CONV"),
                                          ("rev_vit_b", "REV_VIT_B")])
def test_layer_plan_matches_the_official_model(golden_dir, name, variant):
    rows = _golden_layers(golden_dir, variant)
    specs = plan_layers(backbones.model_config(name))
    assert len(rows) == len(specs) > 0
    kinds = {"ReversibleBlock": "reversible", "StageTransitionBlock": "transition"}

    def stride(s):
        return None if s in ("None", "sNone") else tuple(int(v) for v in s.strip("()").split(","))

    for (i, kind, dim, dim_out, heads, _, q_s, _, kv_s, dp), spec in zip(rows, specs):
        assert (kinds[kind], int(dim), int(dim_out), int(heads)) == \
               (spec.kind, spec.dim, spec.dim_out, spec.num_heads), f"layer {i}"
        assert stride(q_s) == spec.q_stride and stride(kv_s) == spec.kv_stride, f"layer {i}"
        assert float(dp) == pytest.approx(spec.drop_path, abs=1e-4), f"layer {i}"


@pytest.mark.parametrize("size", [(32, 32), (45, 61), (97, 33)])
def test_mvit_stage_maps_have_strides_4_to_32_for_any_size(size):
    model = tiny_model("mvit", depth=7, pool_q_stride=[[1, 1, 2, 2], [3, 1, 2, 2], [5, 1, 2, 2]],
                       dim_mul=[[1, 2.0], [3, 2.0], [5, 2.0]], head_mul=[[1, 2.0], [3, 2.0]]).eval()
    x = torch.randn(1, 3, *size)
    maps = model.forward_stages(x)
    assert model.stage_strides == [4, 8, 16, 32]
    assert [m.shape[1] for m in maps] == model.stage_channels == [16, 32, 64, 128]
    for m, stride in zip(maps, model.stage_strides):
        assert m.shape[2:] == tuple(-(-s // stride) for s in size)


def test_vit_stage_map_is_the_last_map():
    model = tiny_model("vit", depth=2).eval()
    (m,) = model.forward_stages(torch.randn(2, 3, 48, 40))
    assert m.shape == (2, 64, 6, 5) and model.stage_strides == [8]


def test_video_stage_maps_keep_time():
    model = tiny_model("mvit_video", depth=6).eval()
    maps = model.forward_stages(torch.randn(1, 3, 4, 32, 32))
    assert [tuple(m.shape[2:]) for m in maps] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]


@pytest.mark.parametrize("kind,size", [("vit", (48, 64)), ("mvit", (64, 48)),
                                       ("mvit_video", (6, 48, 40))])
def test_other_input_sizes_resize_position_embeddings(kind, size):
    model = tiny_model(kind, depth=6).eval()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5)


def test_position_embedding_resize_is_identity_at_the_configured_size():
    from backbones.layers import resize_pos_embed

    pos = torch.randn(1, 16, 8)
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos
    up = resize_pos_embed(pos, (4, 4), (8, 8))
    assert up.shape == (1, 64, 8)
    assert torch.allclose(resize_pos_embed(up, (8, 8), (4, 4)).mean(), pos.mean(), atol=0.1)


def test_forward_features_and_head_compose():
    model = tiny_model("mvit", depth=6).eval()
    x = tiny_input(model)
    feats = model.forward_features(x)
    assert feats.shape == (2, 4, model.num_features)  # 32/4 -> 8, /2 -> 4, /2 -> 2: 2x2 tokens
    assert torch.equal(model.forward_head(feats), model(x))


# ----------------------------------------------------------------------------- bad input
def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="rev_vit_b.*rev_mvit_b|rev_mvit_b.*rev_vit_b"):
        backbones.build("rev_vit_xxl")


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="embeddim"):
        backbones.build("rev_vit_s", embeddim=10)


def test_embed_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match="embed_dim=100 is not divisible by num_heads=6"):
        backbones.build("rev_vit_s", embed_dim=100)


@pytest.mark.parametrize("strides,layer", [([[1, 1, 2, 2], [2, 1, 2, 2]], "layer 2 .* after layer 1"),
                                           ([[0, 1, 2, 2]], "layer 0 .* after the patch embedding")])
def test_reversible_stage_without_reversible_block_is_refused(strides, layer):
    with pytest.raises(ValueError, match=layer):
        backbones.build("rev_mvit_b", depth=4, pool_q_stride=strides, dim_mul=[], head_mul=[])
    backbones.build("nonrev_mvit_b", depth=4, pool_q_stride=strides, dim_mul=[], head_mul=[])  # twin: fine


def test_layer_index_beyond_depth():
    with pytest.raises(ValueError, match="names layer 14, but depth=8"):
        backbones.build("rev_mvit_b", depth=8)


@pytest.mark.parametrize("shape,match", [((2, 3, 4, 32, 32), r"\(B, 3, H, W\), got \(2, 3, 4, 32, 32\)"),
                                         ((2, 1, 32, 32), r"\(B, 3, H, W\), got \(2, 1, 32, 32\)"),
                                         ((2, 3, 4, 4), "smaller than the patch kernel")])
def test_wrong_input_shape_names_expected_and_given(shape, match):
    model = tiny_model("vit", depth=1)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(shape))


def test_video_model_rejects_images():
    model = tiny_model("mvit_video", depth=6)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(1, 3, 32, 32))


def test_integer_input_is_rejected():
    model = tiny_model("vit", depth=1)
    with pytest.raises(TypeError, match="floating-point.*torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_concat_fusion_passes_both_streams_to_the_transition_unchanged():
    """PRE_Q_FUSION "concat" (official: identity, no parameters): the transition works on the
    2C concatenation itself, like concat_linear_2 minus its fusion MLP."""
    concat = tiny_model("mvit", fusion="concat")
    linear = tiny_model("mvit", fusion="concat_linear_2")
    assert set(linear.state_dict()) - set(concat.state_dict()) == {
        k for k in linear.state_dict() if ".pre_q_fuse.fuse_fn." in k}
    transition = concat.layers[1]
    x = torch.randn(2, 5, 16)
    assert isinstance(transition, StageTransition) and transition.pre_q_fuse(x) is x
    assert concat(tiny_input(concat)).shape == (2, 5)


def test_stage_transition_drops_only_its_branches():
    """Decision (README, "Differences from the official implementation"): stochastic depth in a
    stage transition drops the attention and MLP branches, never the residual. The official
    block drops its whole output, zeroing a dropped sample's features for every later layer."""
    torch.manual_seed(0)
    block = StageTransition(16, 32, 2, fusion="avg", mlp_ratio=4.0, drop_path=1 - 1e-7,
                            kernel=(1, 3, 3), q_stride=(1, 2, 2), kv_stride=None).train()
    x, thw = torch.randn(4, 64, 32), (1, 8, 8)
    out, out_thw = block(x, thw)
    fused = block.pre_q_fuse(x)
    residual = block.F.attn.pool_residual(block.res_proj(fused), thw)
    assert out_thw == (1, 4, 4)
    torch.testing.assert_close(out, residual)  # both branches dropped, the skip kept
    assert residual.abs().sum() > 0
    assert not torch.allclose(block.eval()(x, thw)[0], residual)  # eval: nothing dropped
