"""Weights from http(s):// URLs: downloaded once into revvision's cache, over real HTTP.

A local ``http.server`` on 127.0.0.1 serves the checkpoints and records every request, so
the tests see that the second load is served from the cache; nothing touches the internet.
"""

import http.server
import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
from backbones.errors import UserError
from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


class _Server:
    def __init__(self, directory: Path):
        self.requests = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/www; the cache is tmp_path/cache."""
    (tmp_path / "www" / "models").mkdir(parents=True)
    monkeypatch.setenv("REVVISION_CACHE", str(tmp_path / "cache"))
    srv = _Server(tmp_path / "www")
    yield srv
    srv.close()


def test_load_pretrained_downloads_once_into_the_cache(server, tmp_path):
    model = tiny_model("vit")
    backbones.save_checkpoint(tmp_path / "www" / "models" / "tiny_vit.pth", model)
    url = f"{server.url}/models/tiny_vit.pth"

    first = backbones.load_pretrained(url)
    assert server.requests == ["/models/tiny_vit.pth"]
    cached = tmp_path / "cache" / "models" / "tiny_vit.pth"
    assert cached.read_bytes() == (tmp_path / "www" / "models" / "tiny_vit.pth").read_bytes()
    for key, value in model.state_dict().items():
        assert torch.equal(first.state_dict()[key], value), key

    second = backbones.load_pretrained(url)  # from the cache: no new request
    assert server.requests == ["/models/tiny_vit.pth"]
    assert all(torch.equal(second.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_missing_url_is_one_clear_error(server, tmp_path):
    url = f"{server.url}/models/REV_VIT_B.pyth"
    with pytest.raises(UserError, match=r"cannot download http://127\.0\.0\.1:\d+/models/"
                                        r"REV_VIT_B\.pyth: HTTP Error 404"):
        backbones.load_pretrained(url)
    assert server.requests == ["/models/REV_VIT_B.pyth"]
    left = {p.name for p in (tmp_path / "cache").rglob("REV_VIT_B.pyth*")}
    assert left <= {"REV_VIT_B.pyth.lock"}  # iopath's lock, but no (partial) download


def test_detectron2_model_weights_from_a_url(server, tmp_path):
    """MODEL.WEIGHTS of train_det.py goes through RevDetCheckpointer: a detector checkpoint
    and an ImageNet backbone checkpoint, both from URLs."""
    from detectron2.modeling import build_model
    from revdet.checkpoint import RevDetCheckpointer
    from revdet_tiny import tiny_cfg

    torch.manual_seed(0)
    trained = build_model(tiny_cfg())
    RevDetCheckpointer(trained, str(tmp_path / "www" / "models")).save("detector")
    fresh = build_model(tiny_cfg())
    RevDetCheckpointer(fresh).load(f"{server.url}/models/detector.pth")
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert server.requests == ["/models/detector.pth"]
    RevDetCheckpointer(build_model(tiny_cfg())).load(f"{server.url}/models/detector.pth")
    assert server.requests == ["/models/detector.pth"]


def test_video_model_weights_from_a_url(server, tmp_path):
    import revvideo
    from revvideo.model import build_model

    cfg = revvideo.get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "demo_video_revmvit.yaml"))
    torch.manual_seed(0)
    trained = build_model(cfg)
    backbones.save_checkpoint(tmp_path / "www" / "models" / "video.pth", trained)
    cfg.merge_from_list(["MODEL.WEIGHTS", f"{server.url}/models/video.pth"])
    loaded = build_model(cfg)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.state_dict().items())
    cfg.merge_from_list(["MODEL.ARCH", "weights"])  # the architecture stored in the file
    assert build_model(cfg).cfg == trained.cfg
    assert server.requests == ["/models/video.pth"]


def test_eval_cls_weights_from_a_url(server, tmp_path):
    spec = importlib.util.spec_from_file_location("eval_cls", ROOT / "tools" / "eval_cls.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = tiny_model("vit", num_classes=2)
    backbones.save_checkpoint(tmp_path / "www" / "models" / "cls.pth", model)
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(
            tmp_path / "data" / c / "x.png")
    local = tool.evaluate(str(tmp_path / "www" / "models" / "cls.pth"), str(tmp_path / "data"),
                          workers=0, progress=False)
    remote = tool.evaluate(f"{server.url}/models/cls.pth", str(tmp_path / "data"), workers=0,
                           progress=False)
    assert remote["images"] == local["images"] == 2
    assert remote["top1"] == local["top1"] and server.requests == ["/models/cls.pth"]


def test_without_iopath_a_url_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "iopath.common.file_io", None)  # import fails
    with pytest.raises(UserError, match=r"cannot download http://127\.0\.0\.1:9/w\.pth: weights "
                                        r"from a URL need iopath \(pip install iopath\)"):
        backbones.load_pretrained("http://127.0.0.1:9/w.pth")


def test_backbones_imports_without_iopath():
    import subprocess
    import sys

    code = ("import sys; import backbones; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('iopath', 'detectron2')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
