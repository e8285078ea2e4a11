"""revvision.checkpointer: the one checkpointer base of revdet and revvideo.

Storage other than the local disk (OUTPUT_DIR through an iopath handler), saves that crash
half-way, one error type for bad files in both tools, and no process-wide patch of fvcore.
"""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

import revdet  # noqa: F401  (both packages imported: neither may patch fvcore)
import revvideo  # noqa: F401
from backbones.checkpoint import CheckpointError, CheckpointNotFoundError
from backbones.errors import UserError
from revdet.checkpoint import RevDetCheckpointer
from revvideo.checkpoint import VideoCheckpointer
from revvision.checkpointer import SafeCheckpointer, last_checkpoint

CHECKPOINTERS = [SafeCheckpointer, RevDetCheckpointer, VideoCheckpointer]


class MemTestHandler(PathHandler):
    """``memtest://`` paths stored under a local folder, like a remote store would be: no
    atomic replace (``mv`` onto an existing file fails, as iopath's own handlers do)."""

    PREFIX = "memtest://"

    def __init__(self):
        super().__init__()
        self.root = None
        self.ops = []

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _local(self, path):
        return os.path.join(self.root, path[len(self.PREFIX):])

    def _get_local_path(self, path, force=False, **kwargs):
        return self._local(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        self.ops.append(("open", path, mode))
        return open(self._local(path), mode)

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _ls(self, path, **kwargs):
        return os.listdir(self._local(path))

    def _mkdirs(self, path, **kwargs):
        os.makedirs(self._local(path), exist_ok=True)

    def _rm(self, path, **kwargs):
        os.remove(self._local(path))

    def _mv(self, src_path, dst_path, **kwargs):
        self.ops.append(("mv", src_path, dst_path))
        if os.path.exists(self._local(dst_path)):
            return False
        os.rename(self._local(src_path), self._local(dst_path))
        return True


@pytest.fixture(scope="module")
def memtest():
    handler = MemTestHandler()
    PathManager.register_handler(handler)
    return handler


@pytest.fixture
def store(memtest, tmp_path):
    """(OUTPUT_DIR as the checkpointer sees it, the local folder behind it)."""
    memtest.root = str(tmp_path / "remote")
    memtest.ops.clear()
    os.makedirs(memtest.root)
    return "memtest://run", tmp_path / "remote" / "run"


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("cls", CHECKPOINTERS, ids=lambda c: c.__name__)
def test_save_and_resume_through_a_non_local_output_dir(cls, store, memtest, tmp_path,
                                                        monkeypatch):
    output_dir, behind = store
    monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would land here
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    ck = cls(model, output_dir, optimizer=opt)
    assert last_checkpoint(output_dir) is None
    ck.save("model_0000004", iteration=4)
    ck.save("model_0000004", iteration=4)  # replacing a file is a remove and a move there
    assert sorted(os.listdir(behind)) == ["last_checkpoint", "model_0000004.pth"]
    assert sorted(os.listdir(tmp_path)) == ["remote"]
    assert (behind / "last_checkpoint").read_text() == "model_0000004.pth"
    assert ("mv", f"{output_dir}/model_0000004.pth.tmp", f"{output_dir}/model_0000004.pth") \
        in memtest.ops
    assert last_checkpoint(output_dir) == f"{output_dir}/model_0000004.pth"

    fresh = _model(1)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    extra = cls(fresh, output_dir, optimizer=fresh_opt).resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    momentum = fresh_opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, opt.state_dict()["state"][0]["momentum_buffer"])


@pytest.mark.parametrize("where", ["local", "memtest"])
@pytest.mark.parametrize("cls", CHECKPOINTERS, ids=lambda c: c.__name__)
def test_a_crash_mid_save_keeps_the_previous_checkpoint_and_tag(cls, where, store, tmp_path,
                                                                monkeypatch):
    output_dir, behind = store if where == "memtest" else (str(tmp_path / "out"),
                                                           tmp_path / "out")
    model = _model(0)
    ck = cls(model, output_dir)
    ck.save("model_0000001", iteration=1)
    before = (behind / "model_0000001.pth").read_bytes()
    saved = model[0].weight.detach().clone()

    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # half-written ...
        raise KeyboardInterrupt  # ... when the job is killed

    monkeypatch.setattr(torch, "save", crash)
    model[0].weight.data.add_(1)
    for name in ("model_0000002", "model_0000001"):  # a new file, and replacing the old one
        with pytest.raises(KeyboardInterrupt):
            ck.save(name, iteration=2)
    monkeypatch.undo()

    assert sorted(os.listdir(behind)) == ["last_checkpoint", "model_0000001.pth"]
    assert (behind / "model_0000001.pth").read_bytes() == before
    resumed = _model(1)
    extra = cls(resumed, output_dir).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert torch.equal(resumed[0].weight, saved)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "unsafe", "missing"])
@pytest.mark.parametrize("cls", CHECKPOINTERS, ids=lambda c: c.__name__)
def test_bad_files_are_one_checkpoint_error_in_both_tools(cls, damage, tmp_path):
    path = tmp_path / "model_final.pth"
    if damage == "truncated":
        torch.save({"model": _model(0).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "unsafe":
        torch.save({"model": _model(0).state_dict(), "extra": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="model_final.pth") as info:
        cls(_model(0), str(tmp_path)).load(str(path))
    assert isinstance(info.value, UserError)
    if damage == "missing":
        assert isinstance(info.value, CheckpointNotFoundError)
        assert isinstance(info.value, FileNotFoundError)


class _Opaque:  # pickled by reference: torch.load(weights_only=True) refuses it
    pass


def test_importing_revdet_and_revvideo_leaves_fvcore_unpatched():
    from fvcore.common.checkpoint import Checkpointer

    loader = Checkpointer.__dict__["_load_file"]
    assert loader.__module__ == "fvcore.common.checkpoint"
    assert loader.__qualname__ == "Checkpointer._load_file"


def test_results_files_go_to_a_non_local_output_dir(store, tmp_path, monkeypatch):
    """results.md of both tools and the video tool's eval_results.json land in OUTPUT_DIR
    through its iopath handler, like the checkpoints, not in a local folder of that name."""
    import json

    import revvideo.engine
    from revvision import train_det, train_video

    output_dir, behind = store
    monkeypatch.chdir(tmp_path)
    video_cfg = revvideo.get_cfg()
    video_cfg.OUTPUT_DIR = output_dir
    results = {"top1": 61.25, "top5": 97.5, "videos": 6, "skipped": 0}
    revvideo.engine.save_results(video_cfg, results)
    train_video.report(video_cfg, results)
    assert json.loads((behind / "eval_results.json").read_text())["top1"] == 61.25
    assert "61.25" in (behind / "results.md").read_text()
    (behind / "results.md").unlink()

    det_cfg = revdet.add_revdet_config(get_cfg())
    det_cfg.OUTPUT_DIR, det_cfg.TEST.VIS_IMAGES = output_dir, 0
    train_det.report(det_cfg, None, {"bbox": {"AP": 12.5, "AP50": 30.0}})
    assert "12.5" in (behind / "results.md").read_text()
    assert sorted(os.listdir(tmp_path)) == ["remote"]


def test_video_weights_load_from_a_non_local_output_dir(store):
    """``--eval-only --resume`` builds the video model from the last checkpoint of OUTPUT_DIR,
    which may be on any storage with a PathManager handler (Detectron2's checkpointer reads
    such paths too)."""
    from pathlib import Path

    from revvideo.model import build_model

    output_dir, _ = store
    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "demo_video_revmvit.yaml"))
    trained = build_model(cfg)
    with torch.no_grad():
        trained.head.projection.weight.add_(1.0)
    VideoCheckpointer(trained, output_dir).save("model_final")
    loaded = build_model(cfg, weights=last_checkpoint(output_dir))
    assert torch.equal(loaded.head.projection.weight, trained.head.projection.weight)
