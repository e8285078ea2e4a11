"""revvideo.decoding: the same frames as pytorchvideo's PyAV pipeline, only the kept ones converted.

The reference ("today's" pipeline) is pytorchvideo alone: ``LabeledVideoDataset`` over
``EncodedVideoPyAV`` (every frame of the window converted to float RGB), then
``UniformTemporalSubsample``, ``Div255``, float ``RandomShortSideScale``, crop, flip,
``Normalize``. revvideo scales in uint8, so pixels may differ by rounding: at most one grey
level (1/255 before normalisation), and on average much less.
"""

import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from torchvision.transforms import Compose, RandomCrop, RandomHorizontalFlip

import revvideo
from backbones.errors import UserError
from pytorchvideo.data import LabeledVideoDataset
from pytorchvideo.data.clip_sampling import RandomClipSampler
from pytorchvideo.data.encoded_video import EncodedVideo
from pytorchvideo.data.encoded_video_pyav import EncodedVideoPyAV
from pytorchvideo.transforms import (ApplyTransformToKey, Div255, Normalize, RandomShortSideScale,
                                     ShortSideScale, UniformTemporalSubsample)
from pytorchvideo.transforms.functional import uniform_crop
from revvideo.data import (VideoDataset, build_test_dataset, build_test_loader, build_train_dataset,
                           clip_duration)
from revvideo.decoding import SelectiveVideo, UniformFrames
from revvideo.model import MultiViewClassifier
from revvideo import multiview
from revvideo.multiview import official_clip_indices
from revvideo.synthetic import ShapesSpec, render_clip, write_mp4
from revvideo.transforms import BatchMix, NormalizeClips

MEAN, STD = (0.45, 0.4, 0.35), (0.225, 0.25, 0.2)
GREY_LEVEL = 1 / 255 / min(STD)  # one grey level after normalisation
VIDEOS = [(96, 25), (72, 30), (60, 30)]  # (frames, fps), 72x56 pixels


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    rows = []
    for i, (frames, fps) in enumerate(VIDEOS):
        spec = ShapesSpec(frames=frames, width=72, height=56, fps=fps)
        path = root / f"video{i}.mp4"
        write_mp4(path, render_clip(i, spec, np.random.default_rng(i)), fps)
        rows.append((str(path), i))
    (root / "train.csv").write_text("".join(f"{p} {label}\n" for p, label in rows))
    return root, rows


def cfg_for(data_dir, **overrides):
    cfg = revvideo.get_cfg()
    cfg.merge_from_list(["DATA.PATH_TO_DATA_DIR", str(data_dir), "DATA.TEST_SPLIT", "train",
                         "MODEL.NUM_CLASSES", 6, "DATA.NUM_FRAMES", 6, "DATA.SAMPLING_RATE", 3,
                         "DATA.TRAIN_CROP_SIZE", 48, "DATA.TEST_CROP_SIZE", 48,
                         "DATA.MEAN", list(MEAN), "DATA.STD", list(STD), "AUG.ENABLE", False])
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def assert_within_a_grey_level(new, ref):
    assert new.shape == ref.shape and new.dtype == ref.dtype == torch.float32
    diff = (new - ref).abs()
    assert diff.max() <= GREY_LEVEL * 1.001
    assert diff.mean() <= 0.4 * GREY_LEVEL  # rounding, not different frames or offsets


# ------------------------------------------------------------------------ decoding
def test_decoded_clips_are_pytorchvideos_frames_exactly(videos):
    _, rows = videos
    for path, _ in rows:
        old = EncodedVideo.from_path(path, decode_audio=False, decoder="pyav")
        new = SelectiveVideo.from_path(path, UniformFrames(6))
        assert new.duration == old.duration
        for start, end in [(0, Fraction(1)), (Fraction(7, 10), Fraction(33, 20)),
                           (Fraction(1, 3), Fraction(1, 3) + Fraction(18, 30))]:
            want = UniformTemporalSubsample(6)(old.get_clip(start, end)["video"])
            clip = new.get_clip(start, end)
            assert clip["video"].dtype == torch.uint8 and torch.equal(clip["video"], want.to(torch.uint8))
            assert clip["decoded_frames"] == old.get_clip(start, end)["video"].shape[1]
        everything = SelectiveVideo.from_path(path).get_clip(0, old.duration + 1)["video"]
        assert torch.equal(everything, old.get_clip(0, old.duration + 1)["video"].to(torch.uint8))


def _decode_calls(monkeypatch):
    """Records, per ``SelectiveVideo._decode`` call, how many decoded frames it held."""
    held = []
    decode = SelectiveVideo._decode

    def recording(self, *args, **kwargs):
        pts, frames = decode(self, *args, **kwargs)
        held.append(len(frames))
        return pts, frames

    monkeypatch.setattr(SelectiveVideo, "_decode", recording)
    return held


def test_whole_videos_hold_only_the_selected_frames(videos, monkeypatch):
    held = _decode_calls(monkeypatch)
    for (path, _), (frames, fps) in zip(videos[1], VIDEOS):
        video = SelectiveVideo.from_path(path, lambda n, _: _official_frames(n, fps))
        clip = video.get_clip(0, video.duration + 1)
        assert clip["decoded_frames"] == frames
        assert held[-1] == len(torch.unique(_official_frames(frames, fps))) < frames
    assert len(held) == len(VIDEOS)  # one decoding pass per video


@pytest.mark.parametrize("wrong", [-5, 3])
def test_a_wrong_frame_count_in_the_header_still_gives_the_official_frames(videos, monkeypatch, wrong):
    path, (frames, fps) = videos[1][0][0], VIDEOS[0]
    want = EncodedVideo.from_path(path, decode_audio=False, decoder="pyav").get_clip(0, 100)["video"]
    want = want.index_select(1, _official_frames(frames, fps)).to(torch.uint8)
    monkeypatch.setattr(SelectiveVideo, "_expected_frames", lambda self, *_: frames + wrong)
    held = _decode_calls(monkeypatch)
    video = SelectiveVideo.from_path(path, lambda n, _: _official_frames(n, fps))
    assert torch.equal(video.get_clip(0, video.duration + 1)["video"], want)
    assert len(held) == 2  # the frames the header promised were not the right ones: decoded again


def test_selected_frames_come_in_the_selectors_order_with_repeats(videos):
    path = videos[1][0][0]
    every = SelectiveVideo.from_path(path).get_clip(0, 100)["video"]
    index = torch.tensor([5, 0, 5, 3, 1])
    clip = SelectiveVideo.from_path(path, lambda n, _: index).get_clip(0, 100)["video"]
    # (C, K, H, W) seen over the frames as converted, (K, H, W, C), without a transposing copy
    assert clip.permute(1, 2, 3, 0).is_contiguous()
    assert torch.equal(clip, every.index_select(1, index))


def test_whole_videos_skip_unkept_non_reference_frames_and_give_the_same_frames(videos):
    for (path, _), (frames, fps) in zip(videos[1], VIDEOS):
        index = _official_frames(frames, fps)
        every = SelectiveVideo.from_path(path).get_clip(0, 100)["video"]
        video = SelectiveVideo.from_path(path, lambda n, _: index)
        assert torch.equal(video.get_clip(0, video.duration + 1)["video"], every.index_select(1, index))
        assert 0 < video.frames_skipped < frames - len(torch.unique(index))  # x264's B-frames


def test_decoding_threads_do_not_change_the_frames(videos):
    path = videos[1][0][0]
    one = SelectiveVideo.from_path(path, UniformFrames(6), threads=1).get_clip(Fraction(1, 2), 2)
    two = SelectiveVideo.from_path(path, UniformFrames(6), threads=2).get_clip(Fraction(1, 2), 2)
    assert torch.equal(one["video"], two["video"])


def test_negative_decoding_threads_are_a_config_error(videos):
    with pytest.raises(UserError, match="DATA.DECODING_THREADS must be >= 0"):
        build_train_dataset(cfg_for(videos[0], **{"DATA.DECODING_THREADS": -1}))


@pytest.fixture()
def rgb_conversions(monkeypatch):
    """Counts frames converted to RGB; pytorchvideo's convert-everything decoding must not run."""
    counter = {"frames": 0}
    to_rgb = SelectiveVideo._to_rgb

    def counting(self, frame):
        counter["frames"] += 1
        return to_rgb(self, frame)

    def forbidden(self, *args, **kwargs):
        raise AssertionError("EncodedVideoPyAV converted a whole window to RGB")

    monkeypatch.setattr(SelectiveVideo, "_to_rgb", counting)
    monkeypatch.setattr(EncodedVideoPyAV, "_pyav_decode_video", forbidden)
    monkeypatch.setattr(EncodedVideoPyAV, "get_clip", forbidden)
    return counter


def test_whole_videos_are_decoded_only_up_to_the_last_kept_frame(videos, rgb_conversions):
    path, (frames, _) = videos[1][0][0], VIDEOS[0]
    every = SelectiveVideo.from_path(path).get_clip(0, 100)["video"]
    converted_before = rgb_conversions["frames"]
    index = torch.tensor([2, 0, 11])
    video = SelectiveVideo.from_path(path, lambda n, _: index)
    assert torch.equal(video.get_clip(0, video.duration + 1)["video"], every.index_select(1, index))
    assert rgb_conversions["frames"] - converted_before == 3
    # past frame 11, only the few frames the decoder holds back to reorder B-frames were decoded
    assert video.frames_skipped > frames - 12 - 8


def test_a_training_clip_converts_only_its_kept_frames(videos, rgb_conversions):
    samples = list(build_train_dataset(cfg_for(videos[0])))
    assert len(samples) == len(VIDEOS)
    assert rgb_conversions["frames"] == 6 * len(VIDEOS)  # 6 kept of 14-18 decoded per clip


def test_test_views_convert_each_kept_frame_once(videos, rgb_conversions):
    cfg = cfg_for(videos[0], **{"TEST.NUM_ENSEMBLE_VIEWS": 3})
    samples = list(build_test_dataset(cfg))
    assert [s["video"].shape[0] for s in samples] == [3] * len(VIDEOS)
    kept = sum(len(torch.unique(_official_frames(frames, fps))) for frames, fps in VIDEOS)
    assert rgb_conversions["frames"] == kept <= 3 * 6 * len(VIDEOS)


# ------------------------------------------------------- same clips as pytorchvideo's
def _todays_train_dataset(cfg, rows, sampler):
    d = cfg.DATA
    transform = Compose([UniformTemporalSubsample(d.NUM_FRAMES), Div255(),
                         RandomShortSideScale(*d.TRAIN_JITTER_SCALES), RandomCrop(d.TRAIN_CROP_SIZE),
                         RandomHorizontalFlip(p=0.5), Normalize(MEAN, STD)])
    labeled = [(path, {"label": label}) for path, label in rows]
    return LabeledVideoDataset(labeled, RandomClipSampler(clip_duration(cfg)), sampler,
                               ApplyTransformToKey("video", transform), decode_audio=False,
                               decoder="pyav")


@pytest.mark.parametrize("scales", [(64, 80), (48, 54)])  # up- and downscaling 72x56 frames
def test_training_clips_match_pytorchvideos_for_fixed_seeds(videos, scales):
    data_dir, rows = videos
    cfg = cfg_for(data_dir, **{"DATA.TRAIN_JITTER_SCALES": list(scales)})
    order = lambda items: torch.utils.data.SequentialSampler(items)  # noqa: E731
    ours = VideoDataset(rows, RandomClipSampler(clip_duration(cfg)), order,
                        revvideo.transforms.train_transform(cfg), frame_selector=UniformFrames(6))
    normalise = NormalizeClips.from_config(cfg)  # in the training step
    for seed in range(4):  # 12 clips: random starts, sizes, crops and flips
        torch.manual_seed(seed)  # transforms
        random.seed(seed)  # RandomClipSampler
        new = [normalise(s["video"]) for s in ours]
        torch.manual_seed(seed)
        random.seed(seed)
        ref = [s["video"] for s in _todays_train_dataset(cfg, rows, order)]
        assert len(new) == len(ref) == len(rows)
        for a, b in zip(new, ref):
            assert_within_a_grey_level(a, b)


@pytest.mark.parametrize("aug", [False, True])
def test_the_step_gives_the_model_the_floats_the_loader_used_to(videos, aug):
    """The loader delivers uint8 clips (or [0, 1] floats after RandAugment); ``BatchMix``
    normalises the batch: exactly the floats of normalising each clip in the loader."""
    data_dir, _ = videos
    cfg = cfg_for(data_dir, **{"AUG.ENABLE": aug, "MIXUP.ENABLE": False})
    torch.manual_seed(0)
    random.seed(0)
    clips = [s["video"] for s in build_train_dataset(cfg)]
    assert all(c.dtype == (torch.float32 if aug else torch.uint8) for c in clips)
    assert aug or all(c.is_contiguous() for c in clips)  # collated without a transposing copy
    batch = torch.utils.data.default_collate(clips)
    videos_in, _ = BatchMix.from_config(cfg)(batch, torch.zeros(len(clips), dtype=torch.long))
    in_loader = Compose([Normalize(MEAN, STD)] if aug else [Div255(), Normalize(MEAN, STD)])
    assert torch.equal(videos_in, torch.stack([in_loader(c) for c in clips]))


def _official_frames(num_video_frames, fps):
    return torch.cat([official_clip_indices(num_video_frames, fps, 6, 3, 30, i, 3) for i in range(3)])


def _todays_test_views(path, cfg):
    """Today's multi-view path: the whole video as float, official indices, float scaling."""
    video = EncodedVideo.from_path(path, decode_audio=False, decoder="pyav")
    frames = video.get_clip(0, video.duration + 1)["video"]
    fps = float(video._container.streams.video[0].average_rate)
    index = _official_frames(frames.shape[1], fps)
    clips = ShortSideScale(cfg.DATA.TRAIN_JITTER_SCALES[0])(Div255()(frames.index_select(1, index)))
    return torch.stack([Normalize(MEAN, STD)(uniform_crop(clip, 48, 1)) for clip in clips.split(6, 1)])


@pytest.mark.parametrize("short_side", [56, 64, 50])  # unscaled, up- and downscaled
def test_official_test_views_match_pytorchvideos(videos, short_side):
    data_dir, rows = videos
    cfg = cfg_for(data_dir, **{"TEST.NUM_ENSEMBLE_VIEWS": 3, "DATA.TRAIN_JITTER_SCALES": [short_side, 80]})
    samples = list(build_test_dataset(cfg))
    assert [s["video_index"] for s in samples] == [0, 1, 2]
    views = multiview.TestViews(6, 3, 30, 3, 1, short_side, 48, MEAN, STD)
    for sample, (path, _), (_, fps) in zip(samples, rows, VIDEOS):
        assert sample["video"].dtype == torch.uint8  # normalised by MultiViewClassifier
        new = views.normalize(sample["video"])
        whole = SelectiveVideo.from_path(path).get_clip(0, 100)["video"]  # every frame, unscaled
        # the decoder scaled and cropped each kept frame alone: exactly as the whole clip
        assert torch.equal(new, views({"video": whole, "fps": fps})["video"])
        ref = _todays_test_views(path, cfg)
        if short_side == 56:  # the videos' own height: nothing is scaled, nothing may differ
            assert torch.equal(new, ref)
        else:
            assert_within_a_grey_level(new, ref)


@pytest.mark.parametrize("short_side", [48, 40])  # three crops: the whole scaled frame is kept
def test_three_crop_views_match_the_whole_video_path(videos, short_side):
    data_dir, rows = videos
    cfg = cfg_for(data_dir, **{"TEST.NUM_ENSEMBLE_VIEWS": 2, "TEST.NUM_SPATIAL_CROPS": 3,
                               "DATA.TEST_CROP_SIZE": short_side})
    views = multiview.TestViews.from_config(cfg)
    for sample, (path, _), (_, fps) in zip(build_test_dataset(cfg), rows, VIDEOS):
        whole = SelectiveVideo.from_path(path).get_clip(0, 100)["video"]
        assert sample["video"].shape == (6, 3, 6, short_side, short_side)
        assert torch.equal(views.normalize(sample["video"]), views({"video": whole, "fps": fps})["video"])


@pytest.mark.parametrize("collate", [None, torch.utils.data.default_collate])
def test_the_evaluation_wrapper_gives_the_model_the_normalised_views(videos, collate):
    """The test loader's lists of samples, and the same batches collated."""
    data_dir, rows = videos
    cfg = cfg_for(data_dir, **{"TEST.NUM_ENSEMBLE_VIEWS": 2, "DATA_LOADER.NUM_WORKERS": 0,
                               "TEST.BATCH_SIZE": 2})
    seen = []
    model = lambda x: seen.append(x) or torch.zeros(len(x), 6)  # noqa: E731
    views = multiview.TestViews.from_config(cfg)
    wrapper = MultiViewClassifier(model, torch.device("cpu"), views.normalize)
    for batch in build_test_loader(cfg):
        assert wrapper(collate(batch) if collate else batch).shape == (len(batch), 2, 6)
    want = [views({"video": SelectiveVideo.from_path(p).get_clip(0, 100)["video"], "fps": fps})["video"]
            for (p, _), (_, fps) in zip(rows, VIDEOS)]
    assert torch.equal(torch.cat(seen), torch.cat(want))
