"""backbones.config_keys: SlowFast-style keys -> ModelConfig, old key names, clear errors."""

import dataclasses
import warnings
from types import SimpleNamespace

import pytest
import torch
import yaml

import backbones
from backbones.config_keys import (SLOWFAST_DEFAULTS, ConfigReader, model_config_from_cfg,
                                   mvit_overrides)
from backbones.errors import ConfigError
from backbones.official import config_from_official


def _node(flat):
    """{"MVIT.REV.ENABLE": True} -> {"MVIT": {"REV": {"ENABLE": True}}}."""
    node = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        d = node
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
    return node


def _namespace(node):
    return SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict) else v
                              for k, v in node.items()})


# key, value, field, expected (on the non-reversible twin, which accepts any layout)
MAPPINGS = [
    ("MVIT.EMBED_DIM", 64, "embed_dim", 64),
    ("MVIT.DEPTH", 20, "depth", 20),
    ("MVIT.NUM_HEADS", 2, "num_heads", 2),
    ("MVIT.MLP_RATIO", 2.0, "mlp_ratio", 2.0),
    ("MVIT.DIM_MUL", [[2, 2.0]], "dim_mul", [[2, 2.0]]),
    ("MVIT.HEAD_MUL", [[2, 2.0]], "head_mul", [[2, 2.0]]),
    ("MVIT.POOL_Q_STRIDE", [[2, 1, 2, 2]], "pool_q_stride", [[2, 1, 2, 2]]),
    ("MVIT.POOL_KV_STRIDE_ADAPTIVE", [1, 2, 2], "pool_kv_stride_adaptive", [1, 2, 2]),
    ("MVIT.POOL_KVQ_KERNEL", [5, 5], "pool_kernel", (1, 5, 5)),
    ("MVIT.PATCH_KERNEL", [8, 8], "patch_kernel", (8, 8)),
    ("MVIT.PATCH_STRIDE", [8, 8], "patch_stride", (8, 8)),
    ("MVIT.PATCH_PADDING", [1, 1], "patch_padding", (1, 1)),
    ("MVIT.QKV_BIAS", False, "qkv_bias", False),
    ("MVIT.SEPARATE_QKV", False, "separate_qkv", False),
    ("MVIT.SEP_POS_EMBED", True, "sep_pos_embed", True),
    ("MVIT.REV.PRE_Q_FUSION", "avg", "fusion", "avg"),
    ("MVIT.DROPPATH_RATE", 0.0, "drop_path_rate", 0.0),
    ("MVIT.DROPOUT_RATE", 0.25, "dropout", 0.25),
    ("MODEL.DROPOUT_RATE", 0.5, "head_dropout", 0.5),
    ("MODEL.NUM_CLASSES", 7, "num_classes", 7),
    ("DATA.TRAIN_CROP_SIZE", 160, "input_size", (160, 160)),
    ("DATA.INPUT_CHANNEL_NUM", [1], "in_chans", 1),
]


@pytest.mark.parametrize("as_object", [False, True], ids=["mapping", "attributes"])
@pytest.mark.parametrize("key,value,field,expected", MAPPINGS, ids=[m[0] for m in MAPPINGS])
def test_each_key_sets_its_field(key, value, field, expected, as_object):
    base = backbones.model_config("nonrev_mvit_b")
    assert getattr(base, field) != expected
    node = _node({key: value})
    config = model_config_from_cfg(_namespace(node) if as_object else node, base)
    assert getattr(config, field) == expected
    assert dataclasses.replace(config, **{field: getattr(base, field)}) == base  # nothing else


def test_rev_enable_and_video_input_size():
    video = backbones.model_config("rev_mvit_b_16x4")
    config = model_config_from_cfg(_node({"MVIT.REV.ENABLE": False, "DATA.NUM_FRAMES": 8,
                                          "DATA.TRAIN_CROP_SIZE": 112}), video)
    assert not config.reversible and config.input_size == (8, 112, 112)
    image = model_config_from_cfg(_node({"MVIT.PATCH_2D": True, "DATA.TRAIN_CROP_SIZE": 112,
                                         "MVIT.PATCH_KERNEL": [7, 7], "MVIT.PATCH_STRIDE": [4, 4],
                                         "MVIT.PATCH_PADDING": [3, 3]}), video)
    assert image.input_size == (112, 112) and not image.is_video


def test_unset_values_keep_the_base_and_fixed_fields_win():
    base = backbones.model_config("rev_mvit_b")
    assert model_config_from_cfg({"MVIT": mvit_overrides()}, base) == base
    config = model_config_from_cfg({"MVIT": {"DEPTH": 12}}, base, depth=16, num_classes=1)
    assert (config.depth, config.num_classes) == (16, 1)
    assert model_config_from_cfg({"MVIT": {"DROPPATH_RATE": -1.0}}, base).drop_path_rate == 0.1


def test_official_config_uses_slowfast_defaults_for_absent_keys(golden_dir):
    cfg = yaml.safe_load((golden_dir / "tiny_rev_mvit_video_cfg.yaml").read_text())
    del cfg["MVIT"]["SEPARATE_QKV"], cfg["MVIT"]["POOL_KVQ_KERNEL"]
    config = config_from_official(cfg)
    assert config.separate_qkv is SLOWFAST_DEFAULTS.separate_qkv is False
    assert config.pool_kernel == (3, 3, 3)


@pytest.mark.parametrize("key,value", [("MVIT.MODE", "conv_unshared"), ("MVIT.NORM_STEM", True),
                                       ("MVIT.REV.RES_PATH", "max"),
                                       ("MVIT.REV.RESPATH_FUSE", "add")])
def test_unsupported_official_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"{key}={value!r}"):
        model_config_from_cfg(_node({key: value}), backbones.model_config("rev_mvit_b"))


def test_invalid_values_name_the_problem():
    with pytest.raises(ConfigError, match="embed_dim=100 is not divisible by num_heads=6"):
        model_config_from_cfg({"MVIT": {"EMBED_DIM": 100}}, backbones.model_config("rev_vit_s"))
    with pytest.raises(ConfigError, match="POOL_KV_STRIDE_ADAPTIVE"):
        model_config_from_cfg({"MVIT": {"POOL_KV_STRIDE": [[0, 1, 4, 4]],
                                        "POOL_KV_STRIDE_ADAPTIVE": None}}, SLOWFAST_DEFAULTS)


@pytest.mark.parametrize("key,value", [("MVIT.DEPTH", "deep"), ("MVIT.DIM_MUL", 2),
                                       ("MVIT.DROPPATH_RATE", "high")])
def test_values_of_the_wrong_type_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"{key}={value!r} is not a valid value"):
        model_config_from_cfg(_node({key: value}), backbones.model_config("rev_mvit_b"))


def test_pre_q_fusion_must_be_implemented_where_transitions_use_it():
    node = {"MVIT": {"REV": {"PRE_Q_FUSION": "max"}}}
    with pytest.raises(ConfigError, match="MVIT.REV.PRE_Q_FUSION='max'.*'concat'"):
        model_config_from_cfg(node, backbones.model_config("rev_mvit_b"))
    assert model_config_from_cfg(node, backbones.model_config("rev_vit_b")).fusion == "max"


def test_buffer_layers_must_be_the_layers_that_change_width_or_resolution():
    base = backbones.model_config("rev_mvit_b")
    assert model_config_from_cfg(_node({"MVIT.REV.BUFFER_LAYERS": [14, 1, 3]}), base) == base
    with pytest.raises(ConfigError, match=r"BUFFER_LAYERS=\[1, 3\] .*: \[1, 3, 14\]"):
        model_config_from_cfg(_node({"MVIT.REV.BUFFER_LAYERS": [1, 3]}), base)


def test_renamed_keys_warn_naming_old_and_new_and_still_work():
    cfg = _node({"OLD.DEPTH": 5, "OLD.UNSET": None, "MVIT.DEPTH": 9, "MVIT.EMBED_DIM": 32})
    reader = ConfigReader(cfg, {"OLD.DEPTH": "MVIT.DEPTH", "OLD.UNSET": "MVIT.EMBED_DIM"})
    with pytest.warns(FutureWarning, match="OLD.DEPTH is deprecated.*use MVIT.DEPTH"):
        assert reader.get("MVIT.DEPTH") == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader.get("MVIT.EMBED_DIM") == 32  # an old key left at None is not set


def test_deprecated_twin_names_warn_and_build_the_renamed_twin():
    assert "mvit_b" not in backbones.list_models()
    for old, new in (("mvit_b", "nonrev_mvit_b"), ("mvit_b_16x4", "nonrev_mvit_b_16x4")):
        with pytest.warns(FutureWarning, match=f"'{old}' is deprecated.*'{new}'.*not the published"):
            config = backbones.model_config(old)
        assert config == backbones.model_config(new) and not config.reversible
    assert backbones.zoo.variant("mvit_b", reversible=True) == "rev_mvit_b"
    assert backbones.zoo.variant("rev_mvit_b", reversible=False) == "nonrev_mvit_b"
    assert backbones.zoo.variant("rev_vit_b", reversible=False) == "vit_b"


def test_an_official_checkpoint_with_other_buffer_layers_is_refused_naming_file_and_key(
        golden_dir, tmp_path):
    ckpt = torch.load(golden_dir / "tiny_rev_mvit_img.pyth", weights_only=True)
    cfg = yaml.safe_load(ckpt["cfg"])
    assert cfg["MVIT"]["REV"]["BUFFER_LAYERS"] == [1, 3]
    backbones.load_pretrained(str(golden_dir / "tiny_rev_mvit_img.pyth"))  # as released: fine
    cfg["MVIT"]["REV"]["BUFFER_LAYERS"] = [1, 2, 3]
    path = tmp_path / "other_buffer_layers.pyth"
    torch.save(dict(ckpt, cfg=yaml.safe_dump(cfg)), path)
    with pytest.raises(backbones.CheckpointError,
                       match=r"other_buffer_layers.pyth.*MVIT.REV.BUFFER_LAYERS=\[1, 2, 3\]"):
        backbones.load_pretrained(str(path))
