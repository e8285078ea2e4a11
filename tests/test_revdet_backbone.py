"""revdet backbones: registration, output shapes and strides, and Mask R-CNN training steps."""

import math

import pytest
import torch

import backbones
import revdet
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from revdet_tiny import BACKBONES, CONFIGS, tiny_cfg

from detectron2.config import get_cfg


def test_all_four_backbones_are_registered_by_importing_revdet():
    for name in revdet.BACKBONE_NAMES:
        assert BACKBONE_REGISTRY.get(name) is not None
    assert set(BACKBONES) == set(revdet.BACKBONE_NAMES)


@pytest.mark.parametrize("backbone", ["build_rev_mvit_fpn_backbone", "build_mvit_fpn_backbone"])
@pytest.mark.parametrize("hw", [(64, 64), (97, 131), (33, 70)])
def test_mvit_stage_maps_at_odd_sizes(backbone, hw):
    torch.manual_seed(0)
    fpn = build_backbone(tiny_cfg(backbone)).eval()
    bottom_up = fpn.bottom_up
    shapes = bottom_up.output_shape()
    assert [shapes[n].stride for n in ("scale2", "scale3", "scale4", "scale5")] == [4, 8, 16, 32]
    rev = backbone.startswith("build_rev")
    want_channels = [c * (2 if rev else 1) for c in (8, 16, 32, 64)]
    assert [shapes[n].channels for n in ("scale2", "scale3", "scale4", "scale5")] == want_channels
    assert bottom_up.size_divisibility == 32 and fpn.size_divisibility == 32
    with torch.no_grad():
        maps = bottom_up(torch.randn(2, 3, *hw))
    for name, spec in shapes.items():
        s = spec.stride
        assert maps[name].shape == (2, spec.channels, math.ceil(hw[0] / s), math.ceil(hw[1] / s))
        assert torch.isfinite(maps[name]).all()


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_pyramid_outputs_on_padded_inputs(backbone):
    torch.manual_seed(0)
    fpn = build_backbone(tiny_cfg(backbone)).eval()
    out_shape = fpn.output_shape()
    assert {k: v.stride for k, v in out_shape.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                                                            "p6": 64}
    assert all(v.channels == 16 for v in out_shape.values())
    assert fpn.size_divisibility == 32
    assert fpn.padding_constraints.get("size_divisibility", 32) == 32
    with torch.no_grad():
        feats = fpn(torch.randn(1, 3, 96, 160))
    for name, spec in out_shape.items():
        assert feats[name].shape == (1, 16, math.ceil(96 / spec.stride), math.ceil(160 / spec.stride))


def _batch(sizes):
    batch = []
    for h, w in sizes:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 50.0, 30.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        inst.gt_masks = PolygonMasks([[[4, 6, 30, 6, 30, 40, 4, 40]],
                                      [[20, 10, 50, 10, 35, 30]]])
        batch.append({"image": torch.rand(3, h, w) * 255, "instances": inst,
                      "height": h, "width": w})
    return batch


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_mask_rcnn_training_step(backbone):
    """One optimizer step of the full detector, on odd-sized images (padded to 32)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(backbone)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}
    with EventStorage(0):
        losses = model(_batch([(61, 83), (70, 64)]))
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    opt.step()
    changed = [k for k, v in model.backbone.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before)
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 57, 75) * 255, "height": 57, "width": 75}])
    assert out[0]["instances"].image_size == (57, 75)


@pytest.mark.parametrize("backbone", ["build_rev_mvit_fpn_backbone",
                                      "build_rev_vit_simple_fpn_backbone"])
def test_reversible_backprop_matches_autograd_in_the_detector(backbone):
    """Same weights and data: REV_BACKPROP True (with and without RECOMPUTE_TRANSITIONS) and
    False give the same losses and gradients."""
    grads = []
    for rev, recompute in ((False, False), (True, False), (True, True)):
        torch.manual_seed(0)
        cfg = tiny_cfg(backbone, "MODEL.REV_BACKPROP", rev,
                       "MODEL.RECOMPUTE_TRANSITIONS", recompute)
        model = build_model(cfg).train()
        net = next(m for m in model.backbone.modules() if isinstance(m, backbones.MViT))
        assert (net.rev_backprop, net.recompute_transitions) == (rev, recompute)
        torch.manual_seed(1)
        with EventStorage(0):
            losses = model(_batch([(64, 64)]))
        sum(losses.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.backbone.named_parameters()})
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_arch_for_family_is_a_clear_error():
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", "MODEL.ARCH", "rev_vit_b")
    with pytest.raises(ValueError, match="not a mvit architecture"):
        build_backbone(cfg)


def test_old_revdet_keys_warn_and_build_what_the_new_keys_build():
    """MODEL.REVDET.ARCH / EMBED_DIM / DROP_PATH_RATE / REV_BACKPROP ... (before revdet and
    revvideo shared MODEL.ARCH and MVIT.*) still work for one release, with a FutureWarning."""
    old = tiny_cfg("build_rev_mvit_fpn_backbone", "MODEL.REVDET.ARCH", "mvit_b",
                   "MODEL.REVDET.EMBED_DIM", 16, "MODEL.REVDET.DROP_PATH_RATE", 0.3,
                   "MODEL.REVDET.REV_BACKPROP", False)
    new = tiny_cfg("build_rev_mvit_fpn_backbone", "MODEL.ARCH", "rev_mvit_b",
                   "MVIT.EMBED_DIM", 16, "MVIT.DROPPATH_RATE", 0.3, "MODEL.REV_BACKPROP", False)
    with pytest.warns(FutureWarning) as caught:
        old_net = revdet.backbone.build_net(old, reversible=True, family="mvit")
    messages = " ".join(str(w.message) for w in caught)
    for key, renamed in (("ARCH", "MODEL.ARCH"), ("EMBED_DIM", "MVIT.EMBED_DIM"),
                         ("DROP_PATH_RATE", "MVIT.DROPPATH_RATE"),
                         ("REV_BACKPROP", "MODEL.REV_BACKPROP")):
        assert f"MODEL.REVDET.{key} is deprecated and will be removed in the next release; " \
               f"use {renamed}" in messages
    new_net = revdet.backbone.build_net(new, reversible=True, family="mvit")
    assert old_net.cfg == new_net.cfg and old_net.cfg.embed_dim == 16
    assert old_net.cfg.drop_path_rate == 0.3 and not old_net.rev_backprop


def test_revdet_and_revvideo_share_the_model_keys():
    import revvideo

    det, video = revdet.add_revdet_config(get_cfg()), revvideo.get_cfg()
    assert set(det.MVIT) == set(video.MVIT)
    for key in ("ARCH", "REV_BACKPROP", "RECOMPUTE_TRANSITIONS"):
        assert key in det.MODEL and key in video.MODEL


def test_unknown_arch_names_the_key():
    with pytest.raises(ValueError, match="MODEL.ARCH: .*unknown model 'mvit_x'"):
        build_backbone(tiny_cfg("build_rev_mvit_fpn_backbone", "MODEL.ARCH", "mvit_x"))


@pytest.mark.parametrize("name", ["coco_revmvit.yaml", "coco_mvit.yaml", "coco_revvit_b.yaml",
                                  "demo_shapes_revmvit.yaml"])
def test_configs_merge_and_describe_the_paper_models(name):
    cfg = revdet.add_revdet_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / name))
    if name.startswith("coco"):
        assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.SOLVER.OPTIMIZER == "ADAMW"
        vitdet = name == "coco_revvit_b.yaml"  # ViTDet's lr and layer decay
        assert cfg.SOLVER.BASE_LR == (1e-4 if vitdet else 1.6e-4) and cfg.SOLVER.MAX_ITER == 67500
        assert cfg.SOLVER.LAYER_DECAY == (0.7 if vitdet else 1.0)
        assert cfg.INPUT.RANDOM_RESIZE_CROP.ENABLED and cfg.MODEL.REVDET.INPUT_SIZE == 224
    if name == "coco_revmvit.yaml":
        assert cfg.MODEL.RECOMPUTE_TRANSITIONS  # the memory the paper's model needs
        cfg.MODEL.DEVICE = "cpu"
        shapes = build_backbone(cfg).bottom_up.output_shape()
        assert [s.channels for s in shapes.values()] == [192, 384, 768, 1536]
