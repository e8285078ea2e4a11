"""Smoke test of the environment `make venv` builds: the third-party stack imports.

pytorchvideo.transforms is not imported here: it needs the torchvision alias that
revvideo installs, and revvideo's own tests cover it.
"""

import importlib
import importlib.metadata

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "torch",
        "torchvision",
        "detectron2.modeling",
        "pytorchvideo.data",
        "av",
        "fvcore",
    ],
)
def test_third_party_module_imports(module):
    importlib.import_module(module)


def test_revvision_is_installed():
    assert importlib.metadata.version("revvision") == "0.1.0"
