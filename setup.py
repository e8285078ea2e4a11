"""Packaging for revvision: reversible vision transformers for Detectron2 and PyTorchVideo.

Only ranges are stated here, and install_requires is kept to what every part needs:
on a cluster users bring their own torch (and often a detectron2 built from source
with its CUDA ops), and pip must not replace them. The exact versions tested together
live in requirements.txt, which `make venv` installs. Detectron2 is not on PyPI: see
DETECTRON2_RUNTIME below for how it is installed.
"""

import glob
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

TOP_LEVEL_PACKAGES = ["backbones", "revdet", "revvideo", "revvision"]

# Detectron2 is not on PyPI, so no extra can name it: bring your own build (e.g. with its
# CUDA ops), or, without a compiler, run `python tools/install_detectron2.py` after
# `pip install -e .[det]` (it installs the upstream sources as a pure-Python wheel without
# dependencies, then checks that detectron2 imports). Both revdet and revvideo import it,
# so both extras carry what detectron2 needs at run time.
DETECTRON2_RUNTIME = [
    "fvcore>=0.1.5",
    "iopath>=0.1.7,<0.1.10",
    "pycocotools>=2.0.2",
    "timm>=0.9",  # detectron2's ViT/MViT modules import timm.models.layers
    "yacs>=0.1.8",
    "tabulate",
    "termcolor>=1.1",
    "cloudpickle",
    "matplotlib",
    "tqdm>4.29.0",
    "tensorboard",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "Pillow>=7.1",
    "packaging",
]

# Which extra each package needs beyond install_requires (tests/test_packaging.py checks
# these against the packages' imports): `pip install revvision` is enough for backbones,
# `.[det]` for revdet, `.[video]` for revvideo, both for the revvision commands.
EXTRAS = {
    "det": DETECTRON2_RUNTIME + [
        "torchvision>=0.19",  # RoIAlign / NMS; the release of torch 2.4
        "numpy",
        "opencv-python-headless>=4.5",
        "shapely>=2.0",  # polygon mask cropping in the COCO recipe
    ],
    "video": DETECTRON2_RUNTIME + [
        "torchvision>=0.19",
        "numpy",
        "pytorchvideo>=0.1.5",
        "av>=10",
    ],
    # optional parts of backbones, each imported only when used
    "flops": ["fvcore>=0.1.5"],  # backbones.flops.count_flops
    "download": ["iopath>=0.1.7,<0.1.10"],  # weights from a URL (backbones.checkpoint)
    "dev": [
        "pytest>=7",
        "pytest-timeout>=2",
    ],
}


class build_py_with_configs(build_py):
    """Also copy the top-level configs/ into the built package as revvision/configs, where
    an installed revvision finds its recipes (revvision/config_files.py). A checkout or an
    editable install reads configs/ itself."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "revvision", "configs")
        self.mkpath(target)
        for path in sorted(glob.glob(os.path.join("configs", "*.yaml"))):
            self.copy_file(path, os.path.join(target, os.path.basename(path)))

setup(
    name="revvision",
    version="0.1.0",
    description="Reversible vision transformers (Rev-ViT, Rev-MViT) for Detectron2 and PyTorchVideo",
    python_requires=">=3.10",
    # Each package and its subpackages; an empty list while none exists yet.
    packages=find_packages(
        include=[p for name in TOP_LEVEL_PACKAGES for p in (name, name + ".*")]
    ),
    # Packages live at the repository root. Saying so explicitly makes `pip install -e .`
    # put the root on sys.path (a .pth file) rather than map only the packages that exist
    # at install time, so a package added later imports without reinstalling.
    package_dir={"": "."},
    cmdclass={"build_py": build_py_with_configs},
    # The same commands as tools/train_det.py and tools/train_video.py.
    entry_points={"console_scripts": [
        "revvision-train-det = revvision.train_det:cli",
        "revvision-train-video = revvision.train_video:cli",
    ]},
    install_requires=[
        "torch>=2.4",  # torch.get_autocast_dtype(device_type), torch.get_device_module
        "pyyaml",  # official checkpoints carry their config as YAML
    ],
    extras_require=EXTRAS,
)
