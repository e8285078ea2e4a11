"""Layer-wise LR decay (SOLVER.LAYER_DECAY): the LR and weight decay of every parameter of
tiny Rev-MViT / Rev-ViT models in both tools."""

from pathlib import Path

import pytest
import torch

import revvideo
from backbones.lr_decay import layer_depth
from revdet_tiny import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
DECAY = 0.5


def hyperparams(optimizer):
    """{parameter: (lr, weight_decay)} from the optimizer's groups."""
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert p not in out, "a parameter is in two groups"
            out[p] = (group["lr"], group["weight_decay"])
    return out


def test_layer_depth_numbering():
    assert layer_depth("patch_embed.proj.weight", 5) == 0
    assert layer_depth("pos_embed", 5) == layer_depth("pos_embed_temporal", 5) == 0
    assert layer_depth("layers.0.F.attn.q.weight", 5) == 1
    assert layer_depth("layers.4.G.mlp.fc2.bias", 5) == 5
    assert layer_depth("norm.weight", 5) == layer_depth("head.projection.weight", 5) == 6


def test_video_groups():
    from revvideo.engine import build_optimizer
    from revvideo.model import build_model

    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "demo_video_revmvit.yaml"))
    cfg.merge_from_list(["SOLVER.LAYER_DECAY", DECAY, "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    depth = len(model.layers)
    assert depth == 5
    lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    got = hyperparams(build_optimizer(cfg, model))
    assert len(got) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        if name.startswith(("patch_embed", "pos_embed")):
            scale = DECAY ** (depth + 1)
        elif name.startswith("layers."):
            scale = DECAY ** (depth - int(name.split(".")[1]))
        else:
            assert name.startswith(("norm.", "head.")), name
            scale = 1.0
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name.startswith("pos_embed")
        assert got[p] == (pytest.approx(lr * scale), 0.0 if no_decay else wd), name
    # off by default: two groups, the full LR everywhere
    cfg.merge_from_list(["SOLVER.LAYER_DECAY", 1.0])
    groups = build_optimizer(cfg, model).param_groups
    assert len(groups) == 2 and {g["lr"] for g in groups} == {lr}


@pytest.mark.parametrize("zero_1d, zero_pos", [(False, False), (True, False), (False, True)])
def test_video_weight_decay_switches(zero_1d, zero_pos):
    """SOLVER.ZERO_WD_1D_PARAM exempts exactly the norms and biases (all of the model's 1-D
    parameters), SOLVER.ZERO_WD_POS_EMBED exactly the position embeddings, each alone."""
    from revvideo.engine import build_optimizer
    from revvideo.model import build_model

    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "demo_video_revmvit.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "SOLVER.ZERO_WD_1D_PARAM", zero_1d,
                         "SOLVER.ZERO_WD_POS_EMBED", zero_pos])
    model = build_model(cfg)
    got = hyperparams(build_optimizer(cfg, model))
    for name, p in model.named_parameters():
        no_decay = (zero_1d and p.ndim <= 1) or (zero_pos and name.startswith("pos_embed"))
        assert got[p] == (cfg.SOLVER.BASE_LR, 0.0 if no_decay else cfg.SOLVER.WEIGHT_DECAY), name
    assert any(p.ndim <= 1 for p in model.parameters())
    assert any(n.startswith("pos_embed") for n, _ in model.named_parameters())


@pytest.mark.parametrize("backbone, trunk", [
    ("build_rev_mvit_fpn_backbone", "backbone.bottom_up.net."),
    ("build_rev_vit_simple_fpn_backbone", "backbone.net.net."),
])
def test_detection_groups(backbone, trunk):
    """The trunk decays by block; its stage norms, the pyramid and the heads keep the full
    LR; norms and position embeddings get no weight decay (WEIGHT_DECAY_NORM and
    WEIGHT_DECAY_POS_EMBED 0, as in the demo config), other biases keep it (Detectron2's
    WEIGHT_DECAY_BIAS default)."""
    from detectron2.modeling import build_model
    from revdet.engine import Trainer

    cfg = tiny_cfg(backbone, "SOLVER.LAYER_DECAY", DECAY, "SOLVER.WEIGHT_DECAY_NORM", 0.0)
    model = build_model(cfg)
    trunk_model = model.get_submodule(trunk.rstrip("."))
    depth = len(trunk_model.layers)
    lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    got = hyperparams(Trainer.build_optimizer(cfg, model))
    norms = {p for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    seen_full = set()
    for name, p in model.named_parameters():
        if name.startswith(trunk):
            scale = DECAY ** (depth + 1 - layer_depth(name[len(trunk):], depth))
            assert scale < 1.0, name  # the trunk's norm and head are replaced by Identity
        else:
            scale = 1.0
            seen_full.add(name.split(".")[0] + "." + name.split(".")[1])
        no_decay = p in norms or "pos_embed" in name
        assert got[p] == (pytest.approx(lr * scale), 0.0 if no_decay else wd), name
    assert {"proposal_generator.rpn_head", "roi_heads.box_head"} <= seen_full
    assert any(n.startswith("backbone.") for n in seen_full)  # the pyramid


def test_coco_revvit_b_uses_vitdet_recipe():
    from detectron2.config import get_cfg

    import revdet

    cfg = revdet.add_revdet_config(get_cfg())
    cfg.merge_from_file(str(ROOT / "configs" / "coco_revvit_b.yaml"))
    assert (cfg.SOLVER.LAYER_DECAY, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (0.7, 1e-4, 0.1)
    assert cfg.SOLVER.WEIGHT_DECAY_POS_EMBED == 0.0 and cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
