"""revvideo data: Kinetics lists, datasets, transforms, and bad videos skipped and counted."""

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import revvideo
from revvideo.data import (DatasetError, EpochLoop, VideoDataset, build_test_dataset,
                           build_test_loader, build_train_dataset, build_train_loader,
                           find_split, read_video_list)
from pytorchvideo.data.clip_sampling import RandomClipSampler
from revvideo.multiview import MultiViewEvaluator
from revvideo.synthetic import CLASSES, ShapesSpec, ensure_dataset, render_clip, write_mp4

SPEC = ShapesSpec(num_train=12, num_val=6, frames=24, width=40, height=32, fps=30, seed=1)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    return ensure_dataset(SPEC, tmp_path_factory.mktemp("video_shapes"))


def tiny_cfg(data_dir, **data):
    """A config reading ``data_dir`` as a Kinetics folder, with tiny clips."""
    cfg = revvideo.get_cfg()
    cfg.merge_from_list([
        "DATA.PATH_TO_DATA_DIR", str(data_dir), "MODEL.NUM_CLASSES", 6,
        "DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 2, "DATA.TRAIN_JITTER_SCALES", [24, 28],
        "DATA.TRAIN_CROP_SIZE", 20, "DATA.TEST_CROP_SIZE", 20, "DATA_LOADER.NUM_WORKERS", 0,
        "TRAIN.BATCH_SIZE", 4, "TEST.BATCH_SIZE", 2, "AUG.ENABLE", False,
    ])
    for key, value in data.items():
        cfg.merge_from_list([key, value])
    return cfg


def write_csv(path: Path, rows):
    path.write_text("".join(f"{video} {label}\n" for video, label in rows))


# ------------------------------------------------------------------------------ lists
def test_synthetic_dataset_is_cached_and_deterministic(shapes_dir, tmp_path):
    assert (shapes_dir / "train.csv").read_text().count("\n") == SPEC.num_train
    assert (shapes_dir / "classes.txt").read_text().split() == CLASSES
    again = ensure_dataset(SPEC, shapes_dir.parent)  # cached: same folder, not regenerated
    assert again == shapes_dir
    rng = lambda: np.random.Generator(np.random.PCG64(3))  # noqa: E731
    assert np.array_equal(render_clip(2, SPEC, rng()), render_clip(2, SPEC, rng()))


def test_csv_and_folder_layouts_agree(shapes_dir):
    csv = read_video_list(find_split(str(shapes_dir), "train"), num_classes=6)
    folder = read_video_list(str(shapes_dir / "train"), num_classes=6)
    assert csv.source.endswith("train.csv") and folder.class_names == CLASSES
    assert sorted(csv.videos) == sorted(folder.videos)
    assert len(csv.videos) == SPEC.num_train and all(os.path.isabs(p) for p, _ in csv.videos)


def test_missing_files_fail_up_front(shapes_dir, tmp_path):
    rows = [(str(shapes_dir / "train" / CLASSES[0] / "train_00000.mp4"), 0)]
    rows += [(f"gone/video_{i}.mp4", 1) for i in range(3)]
    write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(DatasetError, match=r"3 of 4 listed videos do not exist") as e:
        read_video_list(str(tmp_path / "train.csv"), num_classes=6)
    assert "video_0.mp4" in str(e.value) and "video_2.mp4" in str(e.value)


def test_labels_outside_the_classes_are_an_error(shapes_dir, tmp_path):
    video = shapes_dir / "train" / CLASSES[0] / "train_00000.mp4"
    write_csv(tmp_path / "train.csv", [(video, 0), (video, 6), (video, -1)])
    with pytest.raises(DatasetError, match=r"2 label\(s\) outside \[0, 6\)") as e:
        read_video_list(str(tmp_path / "train.csv"), num_classes=6)
    assert "line 2: label 6" in str(e.value) and "line 3: label -1" in str(e.value)


def test_malformed_lines_are_an_error(tmp_path):
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start\nabseiling,abc,1\n")
    with pytest.raises(DatasetError, match=r"line 1: label 'time_start' is not an integer"):
        read_video_list(str(tmp_path / "train.csv"), num_classes=6)


def test_missing_split_names_both_layouts(tmp_path):
    with pytest.raises(DatasetError, match=r"train\.csv nor the folder"):
        find_split(str(tmp_path), "train")


# -------------------------------------------------------------------- dataset outputs
def test_train_dataset_output_shapes(shapes_dir):
    cfg = tiny_cfg(shapes_dir)
    dataset = build_train_dataset(cfg)
    samples = list(dataset)
    assert len(samples) == SPEC.num_train
    assert sorted(s["video_index"] for s in samples) == list(range(SPEC.num_train))
    s = samples[0]
    assert s["video"].shape == (3, 4, 20, 20) and s["video"].dtype == torch.uint8  # normalised by the step
    assert 0 <= s["label"] < 6 and s["fps"] == pytest.approx(30.0)
    batch = next(iter(build_train_loader(cfg, dataset=dataset)))
    assert batch["video"].shape == (4, 3, 4, 20, 20) and batch["label"].shape == (4,)


def test_train_transform_with_rand_augment_keeps_shape(shapes_dir):
    cfg = tiny_cfg(shapes_dir, **{"AUG.ENABLE": True})
    sample = next(iter(build_train_dataset(cfg)))
    assert sample["video"].shape == (3, 4, 20, 20) and torch.isfinite(sample["video"]).all()


def test_clips_are_made_contiguous_once(monkeypatch):
    from revvideo.transforms import Contiguous

    clip = torch.randint(0, 256, (4, 6, 5, 3), dtype=torch.uint8).permute(3, 0, 1, 2)
    out = Contiguous()(clip)
    assert out.is_contiguous() and torch.equal(out, clip)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # in a worker:
    assert Contiguous()(clip) is clip  # collation copies it anyway


@pytest.mark.parametrize("in_worker", [False, True])
def test_collated_clips_keep_their_values_and_memory_layout(monkeypatch, in_worker):
    from torch.utils.data import default_collate

    from revvideo.transforms import collate_clips

    views = [torch.randint(0, 256, (2, 4, 6, 5, 3), dtype=torch.uint8).permute(0, 4, 1, 2, 3)
             for _ in range(3)]  # (views, C, T, H, W) over (views, T, H, W, C) memory
    clips = [torch.rand(3, 4, 6, 5) for _ in range(3)]
    cropped = [torch.randint(0, 256, (4, 9, 8, 3), dtype=torch.uint8).permute(3, 0, 1, 2)[:, :, 2:8, 1:6]
               for _ in range(3)]  # a crop of channels-last frames: not dense
    if in_worker:
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    for tensors in (views, clips, cropped):
        batch = [{"video": x, "label": i} for i, x in enumerate(tensors)]
        out, want = collate_clips(batch), default_collate(batch)
        assert torch.equal(out["video"], want["video"]) and torch.equal(out["label"], want["label"])
        outermost_first = sorted(range(tensors[0].dim()), key=lambda d: -tensors[0].stride(d))
        assert out["video"][0].permute(*outermost_first).is_contiguous()  # each in its own layout
        assert out["video"].is_shared() == in_worker  # a worker sends it through shared memory
    ragged = [torch.zeros(3, 2), torch.zeros(3, 2).t()]  # (3, 2) and (2, 3): torch's own error
    with pytest.raises(RuntimeError):
        collate_clips(ragged)


@pytest.mark.parametrize("crops", [1, 3])
def test_test_dataset_output_shapes(shapes_dir, crops):
    cfg = tiny_cfg(shapes_dir, **{"TEST.NUM_ENSEMBLE_VIEWS": 2, "TEST.NUM_SPATIAL_CROPS": crops})
    batch = next(iter(build_test_loader(cfg)))  # a list of samples, as Detectron2's test loaders
    assert [sample["video"].shape for sample in batch] == [(2 * crops, 3, 4, 20, 20)] * 2
    assert [sample["video"].dtype for sample in batch] == [torch.uint8] * 2
    assert all(isinstance(sample["label"], int) for sample in batch)


# ------------------------------------------------------------------------ bad videos
@pytest.fixture()
def list_with_bad_videos(shapes_dir, tmp_path):
    """A Kinetics folder whose train and val lists hold 4 good videos and 3 bad ones."""
    good = [(str(shapes_dir / "train" / c / f"train_{i:05d}.mp4"), i) for i, c in enumerate(CLASSES[:4])]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    short = tmp_path / "short.mp4"
    write_mp4(short, render_clip(0, ShapesSpec(frames=2, width=40, height=32), np.random.default_rng(0)), 30)
    rows = good[:2] + [(corrupt, 1), (empty, 2), (short, 0)] + good[2:]
    write_csv(tmp_path / "train.csv", rows)
    shutil.copy(tmp_path / "train.csv", tmp_path / "val.csv")
    return tmp_path, {str(corrupt), str(empty), str(short)}


def test_bad_videos_are_skipped_and_counted_in_the_epoch_summary(list_with_bad_videos, caplog):
    data_dir, bad = list_with_bad_videos
    cfg = tiny_cfg(data_dir, **{"DATA.MIN_FRAMES": 4, "TRAIN.BATCH_SIZE": 2})
    loop = build_train_loader(cfg)
    assert isinstance(loop, EpochLoop)
    with caplog.at_level(logging.WARNING, logger="revvideo"):
        it = iter(loop)
        clips = sum(len(next(it)["label"]) for _ in range(2))  # 4 good clips = 2 batches of 2+2
        next(it)  # the second epoch's first batch: the first epoch's summary is logged
    assert clips == 4
    summary = loop.history[0]
    assert summary["skipped"] == 3 and set(summary["skipped_videos"]) == bad
    assert summary["clips"] == 4 and summary["videos"] == 7
    text = caplog.text
    assert "cannot open" in text and "zero-length file" in text
    assert "too short: 2 frame(s)" in text
    assert "Epoch 1 done: 4 clips in 2 batches from 7 videos, 3 skipped" in text


def test_bad_videos_are_skipped_and_counted_in_evaluation(list_with_bad_videos):
    data_dir, bad = list_with_bad_videos
    cfg = tiny_cfg(data_dir, **{"DATA.MIN_FRAMES": 4, "TEST.NUM_ENSEMBLE_VIEWS": 2})
    dataset = build_test_dataset(cfg)
    evaluator = MultiViewEvaluator(6, dataset.expected_ids(), dataset.video_paths, expected_views=2)
    for batch in build_test_loader(cfg, dataset):
        labels = torch.tensor([sample["label"] for sample in batch])
        evaluator.process(batch, torch.nn.functional.one_hot(labels, 6).float()[:, None].repeat(1, 2, 1))
    results = evaluator.evaluate()
    assert results["videos"] == 4 and results["skipped"] == 3 and results["top1"] == 100.0
    assert {dataset.video_paths[i] for i in evaluator.skipped_ids} == bad


def test_an_epoch_without_any_readable_video_is_an_error(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"not a video")
    write_csv(tmp_path / "train.csv", [(tmp_path / "a.mp4", 0), (tmp_path / "b.mp4", 1)])
    with pytest.raises(RuntimeError, match="none of the 2 videos could be read"):
        next(iter(build_train_loader(tiny_cfg(tmp_path))))


def test_more_than_ten_bad_videos_in_a_row_do_not_stop_the_epoch(shapes_dir, tmp_path):
    bad = [(tmp_path / f"bad{i}.mp4", 0) for i in range(12)]
    for path, _ in bad:
        path.write_bytes(b"\x00" * 100)
    good = (shapes_dir / "train" / CLASSES[1] / "train_00001.mp4", 1)
    write_csv(tmp_path / "train.csv", bad + [good])
    dataset = VideoDataset([(str(p), lab) for p, lab in bad + [good]], RandomClipSampler(0.2),
                           lambda items: torch.utils.data.SequentialSampler(items))
    samples = list(dataset)
    assert [s["label"] for s in samples] == [1]


def test_spawned_loader_workers(shapes_dir):
    """Datasets and transforms pickle into spawned workers (file_system tensor sharing)."""
    cfg = tiny_cfg(shapes_dir, **{"DATA_LOADER.NUM_WORKERS": 1, "DATA_LOADER.START_METHOD": "spawn"})
    loop = build_train_loader(cfg)
    assert loop.loader.multiprocessing_context.get_start_method() == "spawn"
    assert torch.multiprocessing.get_sharing_strategy() == "file_system"
    batch = next(iter(loop))
    assert batch["video"].shape == (4, 3, 4, 20, 20)
    assert batch["video"].permute(0, 2, 3, 4, 1).is_contiguous()  # collated as decoded, (T, H, W, C)
    torch.multiprocessing.set_sharing_strategy("file_descriptor")
