"""revvideo multi-view test protocol: official frame sampling, views, score aggregation."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import revvideo  # noqa: F401  (pytorchvideo import fix)
from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
from pytorchvideo.transforms.functional import uniform_crop, uniform_temporal_subsample
from revvideo import multiview
from revvideo.multiview import MultiViewEvaluator, ViewScores, official_clip_indices
from revvideo.transforms import BatchMix, soft_cross_entropy


# ----------------------------------------------------------------- temporal sampling
def _official(frames, fps, clip_idx, num_clips=5, num_frames=16, rate=4, target_fps=30):
    """The official formula written out independently (README section 6)."""
    clip_size = max(1.0, rate * num_frames / target_fps * fps)
    start = max(frames - clip_size, 0) * clip_idx / num_clips
    index = torch.linspace(start, start + clip_size - 1, num_frames)
    return [min(max(int(i), 0), frames - 1) for i in index.tolist()]


def test_official_indices_by_hand():
    # 300 frames at 30 fps: clips of 64 frames, starts 0, 47.2, 94.4, 141.6, 188.8.
    first = official_clip_indices(300, 30.0, 16, 4, 30, 0, 5).tolist()
    assert first[0] == 0 and first[-1] == 63 and len(first) == 16
    second = official_clip_indices(300, 30.0, 16, 4, 30, 1, 5).tolist()
    assert second[0] == 47 and second[-1] == 110  # truncation of 47.2 and 110.2
    last = official_clip_indices(300, 30.0, 16, 4, 30, 4, 5).tolist()
    assert last[0] == 188 and last[-1] == 251  # the last clip does not end at the video end
    # shorter than a clip: stride kept, the last frame repeated
    short = official_clip_indices(20, 30.0, 16, 4, 30, 3, 5).tolist()
    assert short[:5] == [0, 4, 8, 12, 16] and short[5:] == [19] * 11
    # 25 fps: the clip covers the same 2.13 s, i.e. 53.3 frames
    assert official_clip_indices(250, 25.0, 16, 4, 30, 0, 5).tolist()[-1] == 52


@pytest.mark.parametrize("frames,fps", [(300, 30.0), (250, 25.0), (301, 29.97), (40, 30.0), (7, 30.0)])
def test_official_indices_match_the_formula(frames, fps):
    for clip in range(5):
        assert official_clip_indices(frames, fps, 16, 4, 30, clip, 5).tolist() == _official(frames, fps, clip)


def test_pytorchvideo_constant_clips_sampler_differs():
    """Why revvideo has its own temporal sampling (documented in revvideo.multiview)."""
    frames, fps = 300, 30
    sampler = ConstantClipsPerVideoSampler(Fraction(64, 30), clips_per_video=5)
    differ = 0
    for clip in range(5):
        info = sampler(0, Fraction(frames, fps), {})
        # pytorchvideo's PyAV reader returns the frames with pts in [start, end) (pts rounded up)
        first = -(-info.clip_start_sec * fps // 1)
        last = -(-info.clip_end_sec * fps // 1)
        decoded = torch.arange(int(first), min(int(last), frames))
        ours = uniform_temporal_subsample(decoded[None, :, None, None], 16, temporal_dim=1).flatten()
        differ += ours.tolist() != _official(frames, fps, clip)
    assert differ > 0


# ------------------------------------------------------------------------ test views
def test_test_views_take_the_official_frames_and_center_crop():
    c, t, h, w = 3, 40, 24, 36
    video = torch.arange(t, dtype=torch.float32)[None, :, None, None].expand(c, t, h, w).clone()
    video[:, :, :, :6] = 255.0  # a left margin that the center crop removes
    views = multiview.TestViews(num_frames=4, sampling_rate=2, target_fps=30, num_clips=3, num_crops=1,
                      short_side=24, crop_size=24, mean=[0.0] * 3, std=[1 / 255.0] * 3)
    out = views({"video": video, "fps": 30.0})["video"]
    assert out.shape == (3, c, 4, 24, 24)
    for i in range(3):
        want = official_clip_indices(t, 30.0, 4, 2, 30, i, 3).float()
        assert torch.allclose(out[i, 0, :, 12, 12], want)
    # crop offset ceil((36 - 24) / 2) = 6: the 255 margin (columns 0..5) is gone
    assert out[:, :, :, :, 0].max() < 255


def test_three_spatial_crops_are_left_center_right():
    video = torch.arange(48, dtype=torch.float32)[None, None, None, :].expand(3, 8, 32, 48).clone()
    views = multiview.TestViews(num_frames=2, sampling_rate=1, target_fps=30, num_clips=1, num_crops=3,
                      short_side=64, crop_size=32, mean=[0.0] * 3, std=[1 / 255.0] * 3)
    out = views({"video": video, "fps": 30.0})["video"]  # short side already 32 = crop size
    assert out.shape == (3, 3, 2, 32, 32)
    assert [out[i, 0, 0, 0, 0].item() for i in range(3)] == [0.0, 8.0, 16.0]


@pytest.mark.parametrize("h,w", [(16, 24), (24, 16), (20, 30), (16, 16)])  # unscaled, scaled
@pytest.mark.parametrize("num_crops", [1, 3])
def test_a_prepared_frame_is_the_prepared_clips_frame(h, w, num_crops):
    views = multiview.TestViews(4, 1, 30, 2, num_crops, 16, 16, [0.0] * 3, [1.0] * 3)
    frame = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8)
    want = views.prepare(frame.permute(2, 0, 1)[:, None].contiguous())[:, 0].permute(1, 2, 0)
    assert torch.equal(views.prepare_frame(frame), want)


@pytest.mark.parametrize("num_crops", [1, 3])
def test_views_of_channels_last_frames_equal_the_contiguous_views(num_crops):
    """The decoder's frames are ``(C, K, H, W)`` views of ``(K, H, W, C)`` memory; their
    views hold the values of the same frames made contiguous, cropped and stacked."""
    num_frames, num_clips, crop = 4, 2, 16
    frames = torch.randint(0, 256, (num_clips * num_frames, 16, 24, 3), dtype=torch.uint8)
    views = multiview.TestViews(num_frames, 1, 30, num_clips, num_crops, 16, crop, [0.0] * 3, [1.0] * 3)
    prepared = frames.permute(3, 0, 1, 2)
    if num_crops == 1:
        prepared = views.prepare(prepared)  # the center 16x16
    out = views.views_of_prepared({"video": prepared})["video"]
    contiguous = prepared.contiguous()
    want = torch.stack([uniform_crop(clip, crop, i) for clip in contiguous.split(num_frames, dim=1)
                        for i in ((1,) if num_crops == 1 else (0, 1, 2))])
    assert out.shape == want.shape == (num_clips * num_crops, 3, num_frames, crop, crop)
    assert torch.equal(out, want)
    if num_crops == 1:  # the prepared frames themselves, not a copy
        assert out.untyped_storage().data_ptr() == frames.untyped_storage().data_ptr()


# ----------------------------------------------------------------------- aggregation
def _known_scores():
    """3 videos x 2 views where the summed softmax scores decide, not any single view."""
    probs = torch.tensor([
        [[0.60, 0.30, 0.10], [0.05, 0.50, 0.45]],   # sum [0.65, 0.80, 0.55] -> class 1
        [[0.10, 0.20, 0.70], [0.10, 0.60, 0.30]],   # sum [0.20, 0.80, 1.00] -> class 2
        [[0.50, 0.40, 0.10], [0.45, 0.45, 0.10]],   # sum [0.95, 0.85, 0.20] -> class 0
    ])
    return probs, torch.tensor([1, 2, 1])


def test_scores_are_summed_per_video():
    probs, labels = _known_scores()
    scores = ViewScores(num_classes=3)
    scores.add([10, 11, 12], probs, labels.tolist())
    assert torch.allclose(scores.scores[10], torch.tensor([0.65, 0.80, 0.55], dtype=torch.float64))
    acc = scores.topk((1, 2, 5))
    assert acc[1] == pytest.approx(200 / 3) and acc[2] == 100.0 and acc[5] == 100.0


def test_view_by_view_and_merged_aggregation_agree():
    probs, labels = _known_scores()
    whole = ViewScores(3)
    whole.add([0, 1, 2], probs, labels.tolist())
    a, b = ViewScores(3), ViewScores(3)
    for view in range(2):  # one view at a time, split over two "processes"
        a.add([0, 1], probs[:2, view], labels[:2].tolist())
        b.add([2], probs[2:, view], labels[2:].tolist())
    merged = a.merge(b)
    assert merged.views == {0: 2, 1: 2, 2: 2}
    assert merged.topk((1, 5)) == whole.topk((1, 5))
    with pytest.raises(ValueError, match="two labels"):
        a.add([0], probs[0, :1], [2])


@pytest.mark.parametrize("batch", ["samples", "collated"])
def test_evaluator_on_known_scores(batch):
    probs, labels = _known_scores()
    ev = MultiViewEvaluator(3, expected_ids=[0, 1, 2, 3], video_names=["a", "b", "c", "d"],
                            expected_views=2)
    if batch == "samples":  # the test loader's
        ev.process([{"video_index": i, "label": int(label)} for i, label in enumerate(labels)], probs)
    else:
        ev.process({"video_index": torch.tensor([0, 1, 2]), "label": labels}, probs)
    res = ev.evaluate()
    assert res["top1"] == pytest.approx(200 / 3) and res["top5"] == 100.0
    assert res["videos"] == 3 and res["views_per_video"] == 2 and res["skipped"] == 1


# ------------------------------------------------------------------ mixing and loss
def test_batch_mix_targets_and_soft_cross_entropy():
    torch.manual_seed(0)
    labels = torch.tensor([0, 3, 1, 2])
    videos = torch.randn(4, 3, 2, 8, 8)
    plain = BatchMix(5, enable=False, label_smoothing=0.1)
    x, t = plain(videos.clone(), labels)
    assert torch.equal(x, videos) and torch.allclose(t.sum(1), torch.ones(4))
    logits = torch.randn(4, 5)
    assert torch.allclose(soft_cross_entropy(logits, t), F.cross_entropy(logits, labels, label_smoothing=0.1))
    mixed = BatchMix(5, enable=True, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    for _ in range(4):
        x, t = mixed(videos.clone(), labels)
        assert x.shape == videos.shape and torch.allclose(t.sum(1), torch.ones(4))
        assert t.min() >= 0.1 / 5 - 1e-6  # smoothed, mixed one-hot targets
    one = mixed(videos[:1].clone(), labels[:1])  # a single clip cannot be mixed
    assert one[1].argmax().item() == 0
