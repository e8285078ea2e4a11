"""MODEL.WEIGHTS for detection: official .pyth conversion, safe loading, atomic saving."""

import os
import pickle

import pytest
import torch
from torch import nn

from backbones.checkpoint import CheckpointError
from backbones.layers import resize_pos_embed
from backbones.official import from_official_keys, to_official_keys
from detectron2.modeling import build_backbone
from revdet.checkpoint import RevDetCheckpointer
from revdet_tiny import tiny_cfg

from conftest import GOLDEN

OFFICIAL = GOLDEN / "tiny_rev_mvit_img.pyth"
# The architecture of the golden tiny Rev-MViT (Rev, ST, Rev, ST, Rev, Rev; strides 4, 8, 16).
GOLDEN_ARCH = [
    "MVIT.EMBED_DIM", 8, "MVIT.DEPTH", 6,
    "MVIT.DIM_MUL", [[1, 2.0], [3, 2.0]], "MVIT.HEAD_MUL", [[1, 2.0], [3, 2.0]],
    "MVIT.POOL_Q_STRIDE", [[1, 1, 2, 2], [3, 1, 2, 2]],
    "MODEL.REVDET.OUT_FEATURES", ["scale2", "scale3", "scale4"],
    "MODEL.FPN.IN_FEATURES", ["scale2", "scale3", "scale4"],
]


class Detector(nn.Module):
    """Just enough of a detector for the checkpointer: a backbone plus another module."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.head = nn.Linear(4, 4)


def _detector(backbone="build_rev_mvit_fpn_backbone", *opts):
    torch.manual_seed(0)
    return Detector(tiny_cfg(backbone, *GOLDEN_ARCH, *opts)).eval()


def _golden_state():
    ck = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    return from_official_keys(ck["model_state"])


@pytest.mark.skipif(not OFFICIAL.exists(), reason="golden files not available")
def test_official_pyth_is_converted_into_the_backbone_and_computes_the_official_stages():
    model = _detector()
    RevDetCheckpointer(model).load(str(OFFICIAL))
    net = model.backbone.bottom_up.net
    golden = _golden_state()
    ours = net.state_dict()
    for key, value in golden.items():
        if key.startswith(("head.", "norm.")):
            assert key not in ours
            continue
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    # The stage maps are the official model's intermediate activations.
    io = torch.load(GOLDEN / "tiny_rev_mvit_img_io.pt", weights_only=True)
    acts = torch.load(GOLDEN / "tiny_rev_mvit_img_acts.pt", weights_only=True)
    with torch.no_grad():
        maps = net.forward_stages(io["input"])
    for got, name, hw in zip(maps, ("layer00_out", "layer02_out", "layer05_out"),
                             (16, 8, 4)):
        want = acts[name].transpose(1, 2).reshape(2, -1, hw, hw)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not OFFICIAL.exists(), reason="golden files not available")
def test_position_embedding_is_resized_to_the_detectors_pretraining_grid():
    model = _detector("build_rev_mvit_fpn_backbone", "MODEL.REVDET.INPUT_SIZE", 96)
    RevDetCheckpointer(model).load(str(OFFICIAL))
    pos = model.backbone.bottom_up.net.pos_embed
    want = resize_pos_embed(_golden_state()["pos_embed"], (16, 16), (24, 24), "bicubic")
    assert pos.shape == (1, 24 * 24, 8)
    torch.testing.assert_close(pos.detach(), want)


def test_own_official_format_checkpoint_round_trips(tmp_path):
    """A checkpoint written in the official format from a revvision model loads back exactly."""
    src = _detector().backbone.bottom_up.net
    for p in src.parameters():
        nn.init.normal_(p)
    path = tmp_path / "MINE.pyth"
    cfg_yaml = (GOLDEN / "tiny_rev_mvit_img_cfg.yaml").read_text() if OFFICIAL.exists() else None
    torch.save({"epoch": 1, "model_state": to_official_keys(src.state_dict()), "cfg": cfg_yaml},
               path)
    model = _detector()
    RevDetCheckpointer(model).load(str(path))
    for key, value in model.backbone.bottom_up.net.state_dict().items():
        torch.testing.assert_close(value, src.state_dict()[key], rtol=0, atol=0)


@pytest.mark.skipif(not OFFICIAL.exists(), reason="golden files not available")
def test_architecture_mismatch_is_one_error_naming_the_file():
    model = _detector("build_rev_mvit_fpn_backbone", "MVIT.EMBED_DIM", 16)
    with pytest.raises(CheckpointError, match=r"tiny_rev_mvit_img\.pyth.*shape mismatch"):
        RevDetCheckpointer(model).load(str(OFFICIAL))


def test_missing_and_unexpected_backbone_keys_are_one_error_in_backbone_names(tmp_path):
    import backbones

    net = _detector().backbone.bottom_up.net
    state = dict(net.state_dict())
    del state["layers.1.G.mlp.fc2.bias"]
    state["layers.9.G.mlp.fc2.bias"] = torch.zeros(8)
    path = tmp_path / "partial.pth"
    backbones.save_checkpoint(path, state, config=net.cfg)
    with pytest.raises(CheckpointError, match=r"partial\.pth does not match the detector's backbone "
                       r"\(8-dim, depth 6\): missing in the checkpoint: layers\.1\.G\.mlp\.fc2\.bias; "
                       r"not in the backbone: layers\.9\.G\.mlp\.fc2\.bias$"):
        RevDetCheckpointer(_detector()).load(str(path))


@pytest.mark.skipif(not OFFICIAL.exists(), reason="golden files not available")
def test_reversible_checkpoint_into_the_twin_is_refused():
    model = _detector("build_mvit_fpn_backbone")
    with pytest.raises(CheckpointError, match="reversible model but the backbone is non-reversible"):
        RevDetCheckpointer(model).load(str(OFFICIAL))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("suffix", [".pth", ".pyth"])
def test_arbitrary_pickles_are_refused(tmp_path, suffix):
    path = tmp_path / f"evil{suffix}"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil()}, path)
    with pytest.raises(RuntimeError, match="refusing to load"):
        RevDetCheckpointer(_detector()).load(str(path))


def test_pkl_loader_admits_numpy_only(tmp_path):
    import numpy as np

    good = tmp_path / "zoo.pkl"
    with open(good, "wb") as f:
        pickle.dump({"model": {"head.weight": np.ones((4, 4), np.float32)},
                     "__author__": "someone"}, f)
    model = _detector()
    RevDetCheckpointer(model).load(str(good))
    assert torch.equal(model.head.weight, torch.ones(4, 4))
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {}, "__author__": _Evil()}, f)
    with pytest.raises(RuntimeError, match="refusing to load .*evil.pkl.*posix.system|refusing"):
        RevDetCheckpointer(model).load(str(evil))


def test_detectron2_checkpoints_save_atomically_and_load_with_weights_only(tmp_path, monkeypatch):
    model = _detector()
    opt = torch.optim.AdamW(model.parameters())
    ck = RevDetCheckpointer(model, str(tmp_path), optimizer=opt)
    ck.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    other = _detector()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    extra = RevDetCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9 and calls and all(c is True for c in calls)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _detector()
    ck = RevDetCheckpointer(model, str(tmp_path))
    ck.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
