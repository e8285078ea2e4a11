#!/usr/bin/env python3
"""Install detectron2 into this interpreter without a compiler or a GPU.

Detectron2 has no official release on PyPI. The PyPI project ``sal-detectron2``
0.7.2 ships the unmodified upstream detectron2 Python sources, but as a wheel
tagged for CPython 3.10 that carries a CUDA-12 build of ``detectron2/_C`` and a
stray top-level ``tools`` package. This script:

1. does nothing if ``import detectron2`` already works (a user who built
   detectron2 from source, with its CUDA ops, keeps it);
2. downloads that exact wheel with pip and checks its SHA-256;
3. rewrites it as a pure-Python ``py3-none-any`` wheel: without ``_C``, without
   the ``tools`` package, and without the ``numpy<2`` and ``black``
   requirements, with a freshly computed RECORD;
4. installs the rewritten wheel with ``pip install --no-deps``.

Detectron2's runtime requirements are not installed here: they are pinned in
requirements.txt and listed in setup.py's ``det`` and ``video`` extras. Without ``_C`` there are no rotated-box ops, deformable
convolution or fast COCO evaluation; Mask R-CNN with FPN needs none of them.

Usage:  python tools/install_detectron2.py [--force]
Only the standard library is used, so it runs before anything else is installed.
"""

import argparse
import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PROJECT = "sal-detectron2"
VERSION = "0.7.2"
EXPECTED_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"

# Unconditional requirements removed from METADATA: detectron2's sources work
# with numpy 2 for what this project uses, and black is a formatter only.
DROPPED_REQUIREMENTS = {"numpy", "black"}


def run(cmd):
    print("+", " ".join(str(part) for part in cmd), flush=True)
    subprocess.run(cmd, check=True)


def detectron2_imports():
    """True if `import detectron2` works in this interpreter (checked in a child process)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import detectron2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return probe.returncode == 0


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_hash(data):
    """The digest format of a wheel's RECORD: urlsafe base64 of sha256, no padding."""
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def download(dest):
    run([
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        "--python-version", "3.10", "--implementation", "cp",
        "--dest", dest,
        f"{PROJECT}=={VERSION}",
    ])
    wheels = sorted(Path(dest).glob(f"{PROJECT.replace('-', '_')}-{VERSION}-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"error: expected one {PROJECT} {VERSION} wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def is_dropped_file(name):
    """Files of the original wheel that the pure-Python wheel leaves out."""
    if name.startswith("tools/"):  # stray copy of detectron2's scripts as a top-level package
        return True
    folder, _, base = name.rpartition("/")
    return folder == "detectron2" and base.startswith("_C") and base.endswith(".so")


def rewrite_wheel_file(text):
    lines = []
    for line in text.splitlines():
        if line.startswith("Root-Is-Purelib:"):
            line = "Root-Is-Purelib: true"
        elif line.startswith("Tag:"):
            continue  # the single pure tag is added below
        lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    lines.append("Tag: py3-none-any")
    return "\n".join(lines) + "\n"


def keep_requirement(line):
    if not line.startswith("Requires-Dist:"):
        return True
    requirement = line.split(":", 1)[1].strip()
    name = ""
    for char in requirement:
        if not (char.isalnum() or char in "._-"):
            break
        name += char
    has_marker = ";" in requirement
    return has_marker or name.lower() not in DROPPED_REQUIREMENTS


def rewrite_metadata(text):
    # The header ends at the first blank line; a long description may follow.
    header, blank, body = text.partition("\n\n")
    kept = [line for line in header.split("\n") if keep_requirement(line)]
    return "\n".join(kept) + blank + body


def rewrite_top_level(text):
    names = [name for name in text.split() if name != "tools"]
    return "\n".join(names) + "\n"


def make_pure_wheel(source, dest_dir):
    """Write the py3-none-any variant of the wheel `source` into `dest_dir`."""
    name, version = source.name.split("-")[:2]
    dist_info = f"{name}-{version}.dist-info"
    record_name = f"{dist_info}/RECORD"
    rewriters = {
        f"{dist_info}/WHEEL": rewrite_wheel_file,
        f"{dist_info}/METADATA": rewrite_metadata,
        f"{dist_info}/top_level.txt": rewrite_top_level,
    }
    target = Path(dest_dir) / f"{name}-{version}-py3-none-any.whl"
    record_rows = []
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            if info.is_dir() or info.filename == record_name or is_dropped_file(info.filename):
                continue
            data = old.read(info)
            if info.filename in rewriters:
                data = rewriters[info.filename](data.decode("utf-8")).encode("utf-8")
            new.writestr(info, data)
            record_rows.append(f"{info.filename},{record_hash(data)},{len(data)}")
        record_rows.append(f"{record_name},,")
        # Reusing the original entry's header keeps the output byte-for-byte reproducible.
        new.writestr(old.getinfo(record_name), "\n".join(record_rows) + "\n")
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true",
                        help="install even if `import detectron2` already works")
    args = parser.parse_args()

    if not args.force and detectron2_imports():
        print("detectron2 already importable in", sys.executable, "- nothing to do")
        return

    with tempfile.TemporaryDirectory(prefix="detectron2-wheel-") as tmp:
        original = download(tmp)
        actual = sha256_of(original)
        if actual != EXPECTED_SHA256:
            sys.exit(
                f"error: refusing to install {original.name}: its sha256 is {actual}, "
                f"expected {EXPECTED_SHA256}. The file on the index is not the one this "
                "script was checked against."
            )
        pure = make_pure_wheel(original, tmp)
        print("rewrote", original.name, "as", pure.name, flush=True)
        install = [sys.executable, "-m", "pip", "install", "--no-deps"]
        if args.force:
            install.append("--force-reinstall")
        run(install + [str(pure)])

    if not detectron2_imports():
        sys.exit(
            "error: detectron2 was installed but `import detectron2` fails; "
            "install its runtime requirements first: pip install -e '.[det]' "
            "(or pip install -r requirements.txt for the tested versions)"
        )
    print("detectron2", VERSION, "installed (pure Python, no _C extension)")


if __name__ == "__main__":
    main()
