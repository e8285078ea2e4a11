"""tools/convert_checkpoint.py: official / mmpretrain -> revvision -> official, exactly."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import backbones
from backbones.errors import UserError
from backbones.official import config_from_official

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden"
TOOL = ROOT / "tools" / "convert_checkpoint.py"
OFFICIAL = ["tiny_rev_vit", "tiny_rev_mvit_img", "tiny_rev_mvit_video"]


def _load_tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_dir():
        pytest.skip(f"golden files not found at {GOLDEN} (expected ../shared/golden beside the repo)")
    return GOLDEN


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("variant", OFFICIAL)
def test_official_round_trip_is_exact(golden, tmp_path, variant):
    src = golden / f"{variant}.pyth"
    rev, back = tmp_path / "rev.pth", tmp_path / "back.pyth"
    assert tool.main([str(src), str(rev)]) == 0
    assert tool.main([str(rev), str(back), "--to", "official"]) == 0

    original = torch.load(src, weights_only=True)
    converted = torch.load(rev, weights_only=True)
    returned = torch.load(back, weights_only=True)
    # revvision file: our names, the config as plain data, no optimizer state
    assert set(converted) == {"model", "model_config", "epoch", "official_cfg"}
    assert not any(k.startswith("rev_backbone.") for k in converted["model"])
    assert backbones.ModelConfig(**converted["model_config"]) == config_from_official(
        yaml.safe_load(original["cfg"]))
    # and back: the official state dict and config string, unchanged
    assert set(returned) == {"epoch", "model_state", "cfg"}
    assert returned["epoch"] == original["epoch"] and returned["cfg"] == original["cfg"]
    assert_same_state(returned["model_state"], original["model_state"])


def test_converted_file_reproduces_golden_logits(golden, tmp_path):
    rev = tmp_path / "rev.pth"
    assert tool.main([str(golden / "tiny_rev_mvit_img.pyth"), str(rev)]) == 0
    model = backbones.load_pretrained(rev).eval()
    io = torch.load(golden / "tiny_rev_mvit_img_io.pt", weights_only=True)
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() <= 1e-5


def test_mmpretrain_round_trip_is_exact(golden, tmp_path):
    src = golden / "tiny_rev_vit_mmpretrain.pth"
    rev, back, official = tmp_path / "rev.pth", tmp_path / "back.pth", tmp_path / "o.pyth"
    assert tool.main([str(src), str(rev), "--set", "num_heads=2"]) == 0
    assert tool.main([str(rev), str(back), "--to", "mmpretrain"]) == 0
    assert_same_state(torch.load(back, weights_only=True), torch.load(src, weights_only=True))
    # mmpretrain -> revvision -> official gives the weights the mmpretrain file came from
    assert tool.main([str(rev), str(official), "--to", "official"]) == 0
    ours = torch.load(official, weights_only=True)
    ref = torch.load(golden / "tiny_rev_vit.pyth", weights_only=True)
    assert_same_state(ours["model_state"], ref["model_state"])
    # its generated cfg describes the same architecture (fusion is unused by a ViT)
    want = config_from_official(yaml.safe_load(ref["cfg"]))
    got = config_from_official(yaml.safe_load(ours["cfg"]))
    assert got == backbones.load_pretrained(rev).cfg
    assert {k: v for k, v in got.__dict__.items() if k != "fusion"} == \
        {k: v for k, v in want.__dict__.items() if k != "fusion"}


def test_official_to_mmpretrain_matches_mmpretrains_converter(golden, tmp_path):
    out = tmp_path / "mm.pth"
    assert tool.main([str(golden / "tiny_rev_vit.pyth"), str(out), "--to", "mmpretrain"]) == 0
    assert_same_state(torch.load(out, weights_only=True),
                      torch.load(golden / "tiny_rev_vit_mmpretrain.pth", weights_only=True))


def test_generated_official_cfg_loads_back(golden, tmp_path):
    """Without the original config string (e.g. a model trained here) a SlowFast cfg is generated."""
    model = backbones.load_pretrained(golden / "tiny_rev_mvit_video.pyth")
    ours, official = tmp_path / "ours.pth", tmp_path / "official.pyth"
    backbones.save_checkpoint(ours, model)
    assert tool.main([str(ours), str(official), "--to", "official"]) == 0
    again = backbones.load_pretrained(official)
    assert again.cfg == model.cfg
    assert_same_state(again.state_dict(), model.state_dict())


def test_resizing_on_conversion_drops_the_stale_official_cfg(golden, tmp_path):
    out = tmp_path / "big.pth"
    assert tool.main([str(golden / "tiny_rev_vit.pyth"), str(out), "--set", "input_size=[48,48]"]) == 0
    raw = torch.load(out, weights_only=True)
    assert "official_cfg" not in raw and raw["model_config"]["input_size"] == (48, 48)
    assert raw["model"]["pos_embed"].shape == (1, 36, 32)


def test_errors_are_reported(golden, tmp_path):
    with pytest.raises(UserError, match="mmpretrain implements only the reversible ViT"):
        tool.main([str(golden / "tiny_rev_mvit_img.pyth"), str(tmp_path / "x.pth"),
                   "--to", "mmpretrain"])
    with pytest.raises(UserError, match="num_heads"):
        tool.main([str(golden / "tiny_rev_vit_mmpretrain.pth"), str(tmp_path / "x.pth")])
    with pytest.raises(UserError, match="missing.pyth"):
        tool.main([str(tmp_path / "missing.pyth"), str(tmp_path / "x.pth")])
    with pytest.raises(UserError, match="--set expects KEY=VALUE"):
        tool.main([str(golden / "tiny_rev_vit.pyth"), str(tmp_path / "x.pth"), "--set", "depth"])
    assert not (tmp_path / "x.pth").exists()
    # on the command line: the message and exit status 2, no traceback
    result = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "missing.pyth"),
                             str(tmp_path / "x.pth")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "convert_checkpoint.py: error: checkpoint file not found" in result.stderr
    assert "missing.pyth" in result.stderr


def test_command_line(golden, tmp_path):
    out = tmp_path / "rev.pth"
    result = subprocess.run([sys.executable, str(TOOL), str(golden / "tiny_rev_vit.pyth"), str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and out.is_file()
