"""Loading released checkpoints exactly: formats, golden outputs and gradients, safety, errors.

The golden files were written by the official code (see ../shared/golden/README.md). The
architecture under test always comes from the checkpoint file itself, never from this file.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import backbones
from backbones.checkpoint import (CheckpointError, KeyMismatchError, _load_into, config_for,
                                  parse_checkpoint)
from backbones.layers import resize_pos_embed
from backbones.mmpretrain import from_mmpretrain_keys, to_mmpretrain_keys
from backbones.official import config_from_official, from_official_keys, to_official_keys

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
OFFICIAL = ["tiny_rev_vit", "tiny_rev_mvit_img", "tiny_rev_mvit_video"]
VARIANTS = OFFICIAL + ["tiny_rev_vit_mmpretrain"]
# Some gradients are mathematically zero (softmax is invariant to a bias shared by all keys:
# attn.k.bias without k pooling, norm_k.bias); their golden values are float noise (~1e-9),
# so gradients below this size are compared with an absolute tolerance.
ZERO_GRAD = 1e-6


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_dir():
        pytest.skip(f"golden files not found at {GOLDEN} (expected ../shared/golden beside the repo)")
    return GOLDEN


def golden_file(golden, variant):
    return golden / (variant + (".pth" if variant.endswith("mmpretrain") else ".pyth"))


def load_variant(golden, variant, **kwargs):
    """The model ``load_pretrained`` builds from the golden file.

    mmpretrain files carry no config and the number of heads is not in the tensors: as an
    mmpretrain user would, we take it from the mmpretrain model config that produced the file.
    """
    if variant.endswith("mmpretrain"):
        meta = json.loads((golden / f"{variant}_meta.json").read_text())
        kwargs.setdefault("num_heads", meta["model_cfg"]["backbone"]["arch"]["num_heads"])
    return backbones.load_pretrained(golden_file(golden, variant), **kwargs)


def golden_grads_in_our_names(golden, variant):
    g = torch.load(golden / f"{variant}_grads.pt", weights_only=True)
    convert = from_mmpretrain_keys if variant.endswith("mmpretrain") else from_official_keys
    return g["grad_input"], convert(g["grads"])


# ------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_logits_match_official(golden, variant):
    model = load_variant(golden, variant).eval()
    io = torch.load(golden / f"{variant}_io.pt", weights_only=True)
    with torch.no_grad():
        logits = model(io["input"])
    assert logits.shape == io["logits"].shape
    assert (logits - io["logits"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_rev_backprop_gradients_match_official(golden, variant):
    model = load_variant(golden, variant).train()
    assert model.rev_backprop
    io = torch.load(golden / f"{variant}_io.pt", weights_only=True)
    grad_input, grads = golden_grads_in_our_names(golden, variant)
    x = io["input"].clone().requires_grad_(True)
    out = model(x)
    assert (out - io["train_logits"]).abs().max().item() <= 1e-5
    (out * io["loss_weight"]).sum().backward()

    def check(name, got, ref):
        assert got is not None, f"{name}: no gradient"
        assert got.shape == ref.shape, name
        err = (got - ref).abs().max().item()
        scale = ref.abs().max().item()
        if scale <= ZERO_GRAD:
            assert err <= ZERO_GRAD, f"{name}: abs err {err}"
        else:
            assert err / scale <= 1e-4, f"{name}: rel err {err / scale}"

    check("input", x.grad, grad_input)
    params = dict(model.named_parameters())
    assert set(params) == set(grads)
    for name, p in params.items():
        check(name, p.grad, grads[name])


def test_architecture_comes_from_the_file(golden):
    for variant in OFFICIAL:
        ckpt = torch.load(golden_file(golden, variant), weights_only=True)
        expected = config_from_official(yaml.safe_load(ckpt["cfg"]))
        sd, cfg = backbones.read_state_dict(golden_file(golden, variant))
        assert cfg == expected
        model = backbones.load_pretrained(golden_file(golden, variant))
        assert model.cfg == expected
        assert list(sd) == list(model.state_dict())  # revvision names, class-token keys gone


def test_read_state_dict_in_revvision_names(golden):
    sd, cfg = backbones.read_state_dict(golden / "tiny_rev_mvit_img.pyth")
    model = backbones.build_from_config(cfg)
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert not any(k.startswith("rev_backbone.") for k in sd)
    # mmpretrain: width 32 matches no zoo Rev-ViT, so the heads (and config) are unknown
    sd_mm, cfg_mm = backbones.read_state_dict(golden / "tiny_rev_vit_mmpretrain.pth")
    assert cfg_mm is None
    sd_off, _ = backbones.read_state_dict(golden / "tiny_rev_vit.pyth")
    assert list(sd_mm) == list(sd_off)
    assert all(torch.equal(sd_mm[k], sd_off[k]) for k in sd_off)


def test_mmpretrain_needs_heads_when_width_is_not_in_the_zoo(golden):
    with pytest.raises(CheckpointError, match="heads"):
        backbones.load_pretrained(golden / "tiny_rev_vit_mmpretrain.pth")
    with pytest.raises(CheckpointError, match="embed_dim"):
        backbones.load_pretrained(golden / "tiny_rev_vit_mmpretrain.pth", "rev_vit_s")


def test_name_must_agree_with_an_embedded_config(golden):
    with pytest.raises(CheckpointError, match="different architecture than 'rev_vit_s'"):
        backbones.load_pretrained(golden / "tiny_rev_vit.pyth", "rev_vit_s")


def test_name_may_differ_in_training_settings_and_unused_fields(golden, tmp_path):
    sd, cfg = backbones.read_state_dict(golden / "tiny_rev_vit.pyth")
    assert cfg.fusion == "avg" and backbones.model_config("rev_vit_s").fusion != "avg"
    # a Rev-ViT-S file whose config differs from the zoo only in unused fusion / training settings
    full = backbones.model_config("rev_vit_s", fusion="concat", drop_path_rate=0.0, num_classes=10)
    with torch.device("meta"):
        state = backbones.build_from_config(full).state_dict()
    ckpt = parse_checkpoint({"model": state, "model_config": full.__dict__}, "s.pth")
    assert config_for(ckpt, "rev_vit_s") == full
    with pytest.raises(CheckpointError, match="embed_dim: file 384.0, rev_vit_b 768.0"):
        config_for(ckpt, "rev_vit_b")


def test_rev_backprop_switch_is_passed_through(golden):
    model = backbones.load_pretrained(golden / "tiny_rev_vit.pyth", rev_backprop=False)
    assert not model.rev_backprop


# ------------------------------------------------------------- full-size key layouts
def read_keys(path):
    out = {}
    for line in path.read_text().splitlines():
        key, shape = line.split(" ", 1)
        out[key] = tuple(json.loads(shape))
    return out


def meta_state(keys):
    return {k: torch.empty(s, device="meta") for k, s in keys.items()}


@pytest.mark.parametrize("official,name", [("REV_VIT_S", "rev_vit_s"), ("REV_VIT_B", "rev_vit_b"),
                                           ("REV_MVIT_B_16_CONV", "rev_mvit_b"),
                                           ("REV_MVIT_B_16x4_CONV", "rev_mvit_b_16x4")])
def test_released_key_layouts_load_strict(golden, official, name):
    """A bare state dict with the released keys and shapes fits the zoo model exactly."""
    keys = read_keys(golden / f"{official}_keys.txt")
    ckpt = parse_checkpoint(meta_state(keys), f"{official}.pyth")
    assert ckpt.format == "official"
    with torch.device("meta"):
        model = backbones.build_from_config(config_for(ckpt, name))
    ours = {k: tuple(v.shape) for k, v in to_official_keys(model.state_dict()).items()}
    assert ours == keys
    assert list(ours) == list(keys)


@pytest.mark.parametrize("size,heads", [("S", 6), ("B", 12)])
def test_mmpretrain_full_size_architecture_is_inferred(golden, size, heads):
    keys = read_keys(golden / f"REV_VIT_{size}_mmpretrain_keys.txt")
    ckpt = parse_checkpoint(meta_state(keys), f"revvit-{size}.pth")
    assert ckpt.format == "mmpretrain"
    cfg = config_for(ckpt)
    expected = backbones.model_config(f"rev_vit_{size.lower()}", drop_path_rate=0.0)
    assert cfg == expected and cfg.num_heads == heads
    with torch.device("meta"):
        model = backbones.build_from_config(cfg)
    mm = {k: tuple(v.shape) for k, v in to_mmpretrain_keys(model.state_dict()).items()}
    assert mm == keys and list(mm) == list(keys)
    official = read_keys(golden / f"REV_VIT_{size}_keys.txt")
    assert {k: tuple(v.shape) for k, v in to_official_keys(model.state_dict()).items()} == official


# ------------------------------------------------------- class tokens, optimizer, resizing
def test_class_token_keys_and_optimizer_state_are_ignored(golden, tmp_path):
    ckpt = torch.load(golden / "tiny_rev_vit.pyth", weights_only=True)
    assert "optimizer_state" in ckpt
    state = dict(ckpt["model_state"])
    pos = state["pos_embed"]
    state["pos_embed"] = torch.cat([torch.randn(1, 1, pos.shape[-1]), pos], dim=1)  # class row
    state["cls_token"] = torch.randn(1, 1, pos.shape[-1])
    state["pos_embed_class"] = torch.randn(1, 1, pos.shape[-1])
    path = tmp_path / "with_cls.pyth"
    torch.save({**ckpt, "model_state": state}, path)
    model = backbones.load_pretrained(path).eval()
    io = torch.load(golden / "tiny_rev_vit_io.pt", weights_only=True)
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() <= 1e-5
    # and without the embedded config (grid inferred as square + 1)
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    sd, cfg = backbones.read_state_dict(bare)
    assert cfg is None and torch.equal(sd["pos_embed"], pos) and "cls_token" not in sd


def test_position_embeddings_are_resized_for_a_new_input_size(golden):
    src = backbones.load_pretrained(golden / "tiny_rev_vit.pyth").eval()
    big = backbones.load_pretrained(golden / "tiny_rev_vit.pyth", input_size=(48, 48)).eval()
    assert big.pos_embed.shape == (1, 36, 32)
    assert torch.equal(big.pos_embed.data, resize_pos_embed(src.pos_embed.data, (4, 4), (6, 6)))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():  # same function as the source model resizing at run time
        assert torch.allclose(big(x), src(x), atol=1e-6)


def test_video_position_embeddings_are_resized(golden):
    path = golden / "tiny_rev_mvit_video.pyth"
    src = backbones.load_pretrained(path).eval()
    assert src.cfg.input_size == (8, 64, 64)
    small = backbones.load_pretrained(path, input_size=(4, 96, 96)).eval()
    assert small.pos_embed_temporal.shape[1] == 2 and small.pos_embed_spatial.shape[1] == 24 * 24
    x = torch.randn(1, 3, 4, 96, 96)
    with torch.no_grad():
        assert torch.allclose(small(x), src(x), atol=1e-5)


def test_joint_video_position_embedding_is_resized():
    cfg = backbones.model_config("rev_mvit_b", embed_dim=8, num_heads=1, depth=2, dim_mul=[],
                                 head_mul=[], pool_q_stride=[], input_size=(4, 32, 32),
                                 patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4),
                                 patch_padding=(1, 3, 3), num_classes=3)
    src = backbones.build_from_config(cfg)
    state = {k: v for k, v in src.state_dict().items()}
    ckpt = parse_checkpoint({"model": state, "model_config": cfg.__dict__}, "joint.pth")
    dst = backbones.build_from_config(config_for(ckpt, input_size=(8, 48, 48)))
    report = _load_into(dst, ckpt, strict=True)
    assert report.ok and report.resized == [("pos_embed", (1, 2 * 64, 8), (1, 4 * 144, 8))]
    # time-constant embeddings stay time-constant; each frame is a bicubic resize
    frames = state["pos_embed"].reshape(2, 64, 8)
    first = resize_pos_embed(frames[0][None], (8, 8), (12, 12))
    assert torch.allclose(dst.pos_embed.data.reshape(4, 144, 8)[0], first[0], atol=1e-6)


# ---------------------------------------------------------------------- mismatches
def test_mismatched_keys_are_one_error_listing_them(golden):
    model = backbones.load_pretrained(golden / "tiny_rev_vit.pyth")
    del model.layers[2]  # -> unexpected layers.2.*
    model.head.projection = torch.nn.Linear(64, 7)  # -> shape mismatch
    model.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))  # -> missing
    with pytest.raises(KeyMismatchError) as info:
        backbones.load_checkpoint(model, golden / "tiny_rev_vit.pyth")
    e = info.value
    text = str(e)
    assert "tiny_rev_vit.pyth" in text
    assert e.missing == ["extra"] and "extra" in text
    assert "layers.2.F.attn.q.weight" in e.unexpected and "layers.2.F.attn.q.weight" in text
    assert e.mismatched == [("head.projection.weight", (10, 64), (7, 64)),
                            ("head.projection.bias", (10,), (7,))]
    assert "head.projection.weight: [10, 64] vs [7, 64]" in text


def test_strict_false_reports_instead(golden):
    with pytest.warns(UserWarning, match="head.projection.bias: \\[10\\] vs \\[7\\]"):
        model = backbones.load_pretrained(golden / "tiny_rev_vit.pyth", num_classes=7, strict=False)
    ref = torch.load(golden / "tiny_rev_vit.pyth", weights_only=True)["model_state"]
    assert torch.equal(model.pos_embed.data, ref["pos_embed"])
    model2 = backbones.build_from_config(model.cfg)
    with pytest.warns(UserWarning, match="head.projection.weight"):
        report = backbones.load_checkpoint(model2, golden / "tiny_rev_vit.pyth", strict=False)
    assert not report.ok and [k for k, _, _ in report.mismatched] == ["head.projection.weight",
                                                                       "head.projection.bias"]
    assert torch.equal(model2.layers[0].F.attn.q.weight.data,
                       ref["rev_backbone.layers.0.F.attn.q.weight"])


def test_bare_state_dict_needs_a_name(golden, tmp_path):
    state = torch.load(golden / "tiny_rev_vit.pyth", weights_only=True)["model_state"]
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="pass name="):
        backbones.load_pretrained(path)
    cfg = backbones.load_pretrained(golden / "tiny_rev_vit.pyth").cfg
    overrides = {k: getattr(cfg, k) for k in ("embed_dim", "num_heads", "depth", "input_size",
                                              "patch_kernel", "patch_stride", "drop_path_rate", "fusion")}
    model = backbones.load_pretrained(path, "rev_vit_s", **overrides)
    assert model.cfg == cfg  # num_classes came from the head


def test_unknown_format_names_file_and_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weights": {"conv1.weight": torch.zeros(1)}, "step": 3}, path)
    with pytest.raises(CheckpointError, match=r"other\.pth.*unknown checkpoint format.*'weights', 'step'"):
        backbones.load_pretrained(path)


# ---------------------------------------------------------------------------- safety
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


def test_arbitrary_pickles_are_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"pos_embed": torch.zeros(1)}, "x": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        backbones.load_pretrained(path)
    msg = str(info.value)
    assert str(path) in msg and "arbitrary Python objects" in msg and "weights_only" in msg
    assert "(it needs io.open)" in msg
    assert not marker.exists()


def test_every_load_uses_weights_only(golden, monkeypatch):
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    backbones.load_pretrained(golden / "tiny_rev_mvit_img.pyth")
    backbones.read_state_dict(golden / "tiny_rev_vit_mmpretrain.pth")
    model = backbones.load_pretrained(golden / "tiny_rev_vit.pyth")
    backbones.load_checkpoint(model, golden / "tiny_rev_vit.pyth")
    assert seen == [True] * 4


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_corrupt_files_get_a_clear_error(golden, tmp_path, damage):
    data = (golden / "tiny_rev_vit.pyth").read_bytes()
    path = tmp_path / f"{damage}.pyth"
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"",
                      "garbage": b"this is not a checkpoint at all"}[damage])
    with pytest.raises(CheckpointError, match=rf"{path.name}.*truncated, corrupt or not a PyTorch"):
        backbones.load_pretrained(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pyth"):
        backbones.load_pretrained(tmp_path / "nope.pyth")


# --------------------------------------------------------------------------- saving
def test_save_checkpoint_round_trip(golden, tmp_path):
    model = backbones.load_pretrained(golden / "tiny_rev_mvit_video.pyth")
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 8, 64, 64)).sum().backward()
    opt.step()
    path = tmp_path / "sub" / "ckpt.pth"
    backbones.save_checkpoint(path, model, optimizer=opt.state_dict(), epoch=4)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "model_config", "optimizer", "epoch"}
    assert raw["model_config"]["input_size"] == (8, 64, 64)
    again = backbones.load_pretrained(path)
    assert again.cfg == model.cfg
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert os.listdir(path.parent) == ["ckpt.pth"]


def test_save_checkpoint_is_atomic(golden, tmp_path, monkeypatch):
    model = backbones.load_pretrained(golden / "tiny_rev_vit.pyth")
    path = tmp_path / "ckpt.pth"
    backbones.save_checkpoint(path, model, epoch=1)
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        backbones.save_checkpoint(path, model, epoch=2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pth"]


def test_save_checkpoint_refuses_objects_it_could_not_load_back(tmp_path):
    model = backbones.build("rev_vit_s", embed_dim=16, num_heads=2, depth=2, input_size=(32, 32),
                            patch_kernel=(8, 8), patch_stride=(8, 8), num_classes=3)
    with pytest.raises(TypeError, match=r"checkpoint\['sched'\] is a object"):
        backbones.save_checkpoint(tmp_path / "c.pth", model, sched=object())
    assert not list(tmp_path.iterdir())


def test_ddp_module_prefixes_are_dropped(tmp_path):
    model = backbones.build("rev_vit_s", embed_dim=16, num_heads=2, depth=2, input_size=(32, 32),
                            patch_kernel=(8, 8), patch_stride=(8, 8), num_classes=3)
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}  # as saved from DDP
    path = tmp_path / "ddp.pth"
    backbones.save_checkpoint(path, wrapped, config=model.cfg)
    again = backbones.load_pretrained(path)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
