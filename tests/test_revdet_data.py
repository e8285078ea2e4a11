"""Detection data: the synthetic shapes dataset, clear errors for bad data, any image mode."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import revdet
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from revdet import shapes
from revdet.data import DatasetError, RevDetDatasetMapper, check_datasets, guard_dataset, to_rgb
from revdet.engine import Trainer
from revdet_tiny import make_coco, tiny_cfg, tiny_shapes_opts


def _register(name, json_file, image_root):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)
    guard_dataset(name)


# ----------------------------------------------------------------- shapes data
def test_shapes_are_deterministic_and_well_formed(tmp_path):
    spec = revdet.ShapesSpec("train", num_images=12, image_size=96, max_shapes=4, seed=3)
    a_img, a_inst = shapes.render_image(spec, 5)
    b_img, b_inst = shapes.render_image(spec, 5)
    assert np.array_equal(a_img, b_img) and len(a_inst) == len(b_inst) >= 1
    other, _ = shapes.render_image(revdet.ShapesSpec("val", 12, 96, 4, 3), 5)
    assert not np.array_equal(a_img, other)

    json_a, images = shapes.generate(spec, str(tmp_path / "a"))
    json_b, _ = shapes.generate(spec, str(tmp_path / "b"))
    assert open(json_a).read() == open(json_b).read()
    assert sorted(os.listdir(tmp_path / "a")) == [spec.dirname]  # no temporary folder left
    coco = json.load(open(json_a))
    assert len(coco["images"]) == 12 and [c["name"] for c in coco["categories"]] == list(shapes.CLASSES)
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}
    sizes = {(im["height"], im["width"]) for im in coco["images"]}
    assert len(sizes) > 1 and all(max(s) == 96 for s in sizes)
    for ann in coco["annotations"]:
        im = coco["images"][ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
        assert 0 < ann["area"] <= w * h
    first = Image.open(os.path.join(images, coco["images"][0]["file_name"]))
    assert first.size == (coco["images"][0]["width"], coco["images"][0]["height"])
    # Cached: a second call does not rewrite the split.
    mtime = os.path.getmtime(json_a)
    shapes.generate(spec, str(tmp_path / "a"))
    assert os.path.getmtime(json_a) == mtime


def test_shapes_datasets_register_from_the_config(tmp_path):
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", *tiny_shapes_opts(tmp_path, 5, 3))
    revdet.register_shapes_from_config(cfg)
    try:
        records = DatasetCatalog.get("shapes_val")
        assert len(records) == 3 and all(os.path.isfile(r["file_name"]) for r in records)
        assert MetadataCatalog.get("shapes_val").thing_classes == list(shapes.CLASSES)
    finally:
        revdet.register_shapes_from_config(revdet.add_revdet_config(get_cfg()))


# ----------------------------------------------------------------- bad data
def test_missing_coco_says_where_it_looked_and_the_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as err:
        check_datasets(["coco_2017_train"])
    msg = str(err.value)
    assert str(tmp_path / "datasets" / "coco" / "annotations" / "instances_train2017.json") in msg
    assert "DETECTRON2_DATASETS" in msg and "coco/train2017/*.jpg" in msg


def test_unregistered_dataset_is_named(tmp_path):
    with pytest.raises(DatasetError, match="'no_such_set' is not registered"):
        check_datasets(["no_such_set"])


@pytest.mark.parametrize("damage", ["truncated", "no_images_key", "bad_annotation"])
def test_malformed_annotation_file_is_named(tmp_path, damage):
    json_file, image_root = make_coco(tmp_path, "train", 2)
    text = open(json_file).read()
    if damage == "truncated":
        text = text[: len(text) // 2]
    else:
        coco = json.loads(text)
        if damage == "no_images_key":
            del coco["images"]
        else:
            del coco["annotations"][0]["bbox"]
        text = json.dumps(coco)
    with open(json_file, "w") as f:
        f.write(text)
    _register("revdet_test_broken", json_file, image_root)
    with pytest.raises(DatasetError, match=r"malformed annotation file .*instances_train2017\.json"):
        DatasetCatalog.get("revdet_test_broken")


def test_missing_image_is_named_before_training(tmp_path):
    json_file, image_root = make_coco(tmp_path, "train", 3)
    os.remove(os.path.join(image_root, "0001.png"))
    _register("revdet_test_missing", json_file, image_root)
    with pytest.raises(DatasetError, match=r"1 of 3 images .* missing, e\.g\. .*0001\.png"):
        DatasetCatalog.get("revdet_test_missing")


def test_missing_image_stops_the_trainer_with_its_name(tmp_path):
    json_file, image_root = make_coco(tmp_path, "train", 2)
    os.remove(os.path.join(image_root, "0000.png"))
    _register("revdet_test_missing_tr", json_file, image_root)
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", "DATASETS.TRAIN", ("revdet_test_missing_tr",),
                   "DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path / "out"))
    with pytest.raises(DatasetError, match=r"0000\.png"):
        Trainer(cfg)


def test_corrupt_image_is_named_by_the_mapper(tmp_path):
    json_file, image_root = make_coco(tmp_path, "train", 1)
    with open(os.path.join(image_root, "0000.png"), "wb") as f:
        f.write(b"not a png")
    _register("revdet_test_corrupt", json_file, image_root)
    record = DatasetCatalog.get("revdet_test_corrupt")[0]
    mapper = RevDetDatasetMapper(tiny_cfg(), is_train=True)
    with pytest.raises(DatasetError, match=r"cannot load image .*0000\.png"):
        mapper(record)


# ------------------------------------------------------------ image modes
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_grayscale_and_rgba_images_go_through_inference(tmp_path, mode):
    json_file, image_root = make_coco(tmp_path, "val", 2, mode=mode)
    assert Image.open(os.path.join(image_root, "0000.png")).mode == mode
    name = f"revdet_test_mode_{mode}"
    _register(name, json_file, image_root)
    cfg = tiny_cfg("build_rev_mvit_fpn_backbone", "MODEL.ROI_HEADS.NUM_CLASSES", 80,
                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    loader = Trainer.build_test_loader(cfg, name)
    with torch.no_grad():
        for batch in loader:
            assert batch[0]["image"].shape[0] == 3
            out = model(batch)[0]["instances"]
            assert out.image_size == (64, 64) and out.pred_masks.shape[1:] == (64, 64)


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
def test_to_rgb_accepts_every_channel_layout(shape):
    out = to_rgb(np.zeros(shape, np.uint8))
    assert out.shape == (20, 30, 3)


def test_coco_recipe_augmentation_crops_polygons(tmp_path):
    """The MViTv2 recipe: p=0.5 resize to 400-600 + random 384-600 crop, then 480-800 resize
    and flip; cropped polygon masks (shapely) and recomputed boxes stay consistent."""
    from revdet_tiny import CONFIGS

    json_file, image_root = make_coco(tmp_path, "train", 2, size=96)
    _register("revdet_test_aug", json_file, image_root)
    cfg = revdet.add_revdet_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / "coco_revmvit.yaml"))
    mapper = RevDetDatasetMapper(cfg, is_train=True)
    assert mapper.recompute_boxes
    record = DatasetCatalog.get("revdet_test_aug")[0]
    np.random.seed(0)
    short_sides = set()
    for _ in range(12):
        out = mapper(record)
        h, w = out["image"].shape[1:]
        short_sides.add(min(h, w))
        inst = out["instances"]
        assert 480 <= min(h, w) <= 800 and max(h, w) <= 1333
        if len(inst):
            boxes = inst.gt_boxes.tensor
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all()
            mask_boxes = inst.gt_masks.get_bounding_boxes().tensor
            torch.testing.assert_close(boxes, mask_boxes)
    assert len(short_sides) > 1
