"""tools/eval_cls.py end to end on a synthetic ImageFolder whose answer is known.

The images are sorted into class folders according to the model's own ranking (computed
here with an independently written copy of the official transform), so the expected
top-1 (50%) and top-5 (75%) are known exactly, and a wrong transform, class order,
normalisation or top-k would change them.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
from backbones.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "eval_cls.py"
CLASSES = [f"n{i:08d}" for i in (7, 3, 11, 5, 9, 1)]  # sorted order != creation order
SIZES = [(300, 260), (256, 320), (410, 300), (224, 224), (500, 262), (263, 257)]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _load_tool():
    spec = importlib.util.spec_from_file_location("eval_cls", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def reference_tensor(path):
    """Short side -> 256 (PIL bicubic), center crop 224, [0, 1], ImageNet mean/std; CHW."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)


def random_image(rng, size):
    w, h = size
    coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    noise = rng.normal(0, 20, size=(h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A checkpoint, an ImageFolder tree, and the expected result."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = backbones.build("rev_vit_s", embed_dim=16, num_heads=2, depth=2, input_size=(224, 224),
                            patch_kernel=(32, 32), patch_stride=(32, 32), num_classes=6)
    with torch.no_grad():
        model.head.projection.weight.mul_(100)  # well separated logits
    weights = root / "tiny.pth"
    backbones.save_checkpoint(weights, model)
    model.eval()

    data, pool = root / "data", root / "pool"
    pool.mkdir()
    for c in CLASSES:
        (data / c).mkdir(parents=True)
    sorted_classes = sorted(CLASSES)
    plan = ["hit"] * 6 + ["top5"] * 3 + ["miss"] * 3  # -> top-1 50 %, top-5 75 %
    rng = np.random.default_rng(0)
    placed, i = [], 0
    while len(placed) < len(plan):
        i += 1
        ext = ".png" if i % 3 else ".jpg"
        src = pool / f"img{i:03d}{ext}"
        random_image(rng, SIZES[i % len(SIZES)]).save(src)
        with torch.no_grad():
            logits = model(reference_tensor(src)[None])[0]
        order = logits.argsort(descending=True).tolist()
        gaps = logits.sort(descending=True).values.diff().abs()
        if gaps.min() < 1e-2:  # avoid near ties
            continue
        kind = plan[len(placed)]
        label = {"hit": order[0], "top5": order[1], "miss": order[-1]}[kind]
        dst = data / sorted_classes[label] / src.name
        src.rename(dst)
        placed.append((dst, label, order))
    assert len({label for _, label, _ in placed}) > 1
    return dict(weights=weights, data=data, placed=placed, model=model)


def test_known_answer(known):
    r = tool.evaluate(str(known["weights"]), str(known["data"]), batch_size=5, workers=0,
                      progress=False)
    assert r["images"] == 12 and r["skipped"] == 0 and r["k"] == 5
    assert r["top1"] == pytest.approx(50.0) and r["top5"] == pytest.approx(75.0)
    assert (r["crop"], r["resize"]) == (224, 256)


def test_tool_transform_is_the_official_one(known):
    transform = tool.eval_transform(224)
    for path, _, _ in known["placed"]:
        with Image.open(path) as img:
            ours = transform(img.convert("RGB"))
        assert torch.allclose(ours, reference_tensor(path), atol=1e-6), path


def test_limit_spreads_over_the_data(known):
    r = tool.evaluate(str(known["weights"]), str(known["data"]), limit=4, batch_size=3, workers=0,
                      progress=False)
    files = sorted(known["placed"], key=lambda p: (p[0].parent.name, p[0].name))
    chosen = [files[i] for i in (0, 3, 6, 9)]
    assert r["images"] == 4
    assert r["top1"] == pytest.approx(100 * sum(o[0] == lab for _, lab, o in chosen) / 4)
    assert r["top5"] == pytest.approx(100 * sum(lab in o[:5] for _, lab, o in chosen) / 4)


def test_command_line_prints_a_table(known):
    result = subprocess.run(
        [sys.executable, str(TOOL), "--weights", str(known["weights"]), "--data", str(known["data"]),
         "--batch-size", "4", "--workers", "2"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    header, rule, row = result.stdout.strip().splitlines()[-3:]
    assert "top-1 %" in header and "top-5 %" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["tiny.pth", "12", "0", "50.00", "75.00"]
    assert "eval" in result.stderr and "batch" in result.stderr  # the progress bar


def test_bad_image_stops_with_its_name_or_is_skipped(known, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(known["data"], data)
    good = next(p for p, _, _ in known["placed"] if p.suffix == ".png")
    bad = data / sorted(CLASSES)[2] / "broken.png"
    bad.write_bytes(good.read_bytes()[:300])  # a truncated PNG
    with pytest.raises(tool.BadImageError, match=r"broken\.png"):
        tool.evaluate(str(known["weights"]), str(data), batch_size=5, workers=0, progress=False)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*broken\.png"):
        r = tool.evaluate(str(known["weights"]), str(data), batch_size=5, workers=0,
                          progress=False, skip_bad_images=True)
    assert r["images"] == 12 and r["skipped"] == 1
    assert r["top1"] == pytest.approx(50.0) and r["top5"] == pytest.approx(75.0)
    with pytest.raises(UserError, match=r"cannot read image .*broken\.png"):
        tool.main(["--weights", str(known["weights"]), "--data", str(data), "--workers", "0",
                   "--no-progress"])


def test_wrong_class_count_and_video_models_are_refused(known, tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="has 1 class folders but the model has 6"):
        tool.evaluate(str(known["weights"]), str(tmp_path), workers=0, progress=False)
    video = backbones.build("rev_mvit_b_16x4", embed_dim=8, num_heads=1, depth=1, dim_mul=[],
                            head_mul=[], pool_q_stride=[], input_size=(2, 32, 32), num_classes=6)
    backbones.save_checkpoint(tmp_path / "video.pth", video)
    result = subprocess.run(
        [sys.executable, str(TOOL), "--weights", str(tmp_path / "video.pth"), "--data",
         str(known["data"]), "--workers", "0"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"eval_cls.py: error: {tmp_path / 'video.pth'} holds a video model" in result.stderr
