"""setup.py's requirements against what each package imports, so that the two cannot drift.

Every third-party module a package imports (at the top of a file or inside a function,
found with ``ast``) must come from ``install_requires`` plus that package's extras.
"""

import ast
import importlib.metadata
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Set

import pytest

pytest.importorskip("setuptools")
from packaging.requirements import Requirement  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OWN = {"backbones", "revdet", "revvideo", "revvision"}
# The extras each package is installed with (as the README and setup.py say).
PACKAGE_EXTRAS = {
    "backbones": ("flops", "download"),  # both optional: imported only when used
    "revdet": ("det",),
    "revvideo": ("video",),
    "revvision": ("det", "video"),
}
# Import names whose distribution is named differently.
DISTRIBUTION = {"yaml": "PyYAML", "cv2": "opencv-python-headless", "PIL": "Pillow"}
# Not on PyPI, so no requirement can name it; setup.py says how it is installed.
NOT_ON_PYPI = {"detectron2"}
# Upstream detectron2 requires the black formatter, which it does not import.
NOT_NEEDED_AT_RUN_TIME = {"black"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(package: str) -> Dict[str, List[str]]:
    """Top-level third-party module -> the ``file:line`` places that import it."""
    found: Dict[str, List[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.fixture(scope="module")
def requirements() -> Dict[str, Set[str]]:
    """``{"": install_requires, extra: its requirements}`` from setup.py, as canonical names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from distutils.core import run_setup  # setuptools' copy

    cwd = os.getcwd()
    os.chdir(ROOT)  # setup.py finds its packages relative to the working directory
    try:
        dist = run_setup("setup.py", stop_after="init")
    finally:
        os.chdir(cwd)
    groups = {"": dist.install_requires, **dist.extras_require}
    return {k: {canonical(Requirement(r).name) for r in v} for k, v in groups.items()}


def covered(requirements, package: str) -> Set[str]:
    return requirements[""].union(*(requirements[e] for e in PACKAGE_EXTRAS[package]))


def test_imports_inside_functions_are_found():
    imports = third_party_imports("backbones")
    assert "fvcore" in imports and "yaml" in imports  # both imported only where used
    assert set(imports) <= {"torch", "fvcore", "iopath", "yaml"}


@pytest.mark.parametrize("package", sorted(PACKAGE_EXTRAS))
def test_requirements_cover_the_imports(requirements, package):
    have = covered(requirements, package)
    missing = [f"{DISTRIBUTION.get(module, module)} (import {module}: {places[0]})"
               for module, places in third_party_imports(package).items()
               if module not in NOT_ON_PYPI
               and canonical(DISTRIBUTION.get(module, module)) not in have]
    assert not missing, f"add to setup.py for {package}: {missing}"


def test_packages_importing_detectron2_carry_its_run_time_requirements(requirements):
    """detectron2 is installed without dependencies (tools/install_detectron2.py), so the
    extras of every package that imports it must list what it requires."""
    names = importlib.metadata.packages_distributions().get("detectron2")
    if not names:
        pytest.skip("detectron2 is not installed")
    needed = {canonical(r.name) for r in map(Requirement, importlib.metadata.requires(names[0]))
              if r.marker is None or r.marker.evaluate({"extra": ""})}
    needed -= NOT_NEEDED_AT_RUN_TIME
    users = [p for p in PACKAGE_EXTRAS if "detectron2" in third_party_imports(p)]
    assert users
    for package in users:
        assert needed <= covered(requirements, package), (package, needed - covered(requirements, package))


def test_requirements_txt_pins_everything_setup_py_names(requirements):
    pinned = {canonical(line.split("==")[0].strip())
              for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.lstrip().startswith("#")}
    named = set().union(*requirements.values())
    assert named <= pinned, f"pin in requirements.txt: {sorted(named - pinned)}"
