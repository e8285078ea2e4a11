"""What the demo tools read and where they write: config, weights, and files, folders and
globs in, never written over.

    paths = expand_inputs(["photos/", "extra/*.jpg", "one.png"], IMAGE_EXTENSIONS, "image")
    target = output_file("out/", paths[0], single=len(paths) == 1, extensions=IMAGE_EXTENSIONS)

Problems are ``UserError``s naming the path: a pattern that matches nothing, a folder with
no files of the kind wanted, an output that would replace an input.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Iterable, List, Optional, Sequence, Tuple

from backbones.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")


_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def split_config_overrides(items: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(paths, overrides)``: a list of inputs followed by ``KEY VALUE`` config overrides
    (as argparse hands them over when inputs take several values) is cut at the first
    config key (``MODEL.WEIGHTS``) that is not an existing path."""
    for i, item in enumerate(items):
        if _CONFIG_KEY.fullmatch(item) and not os.path.exists(item):
            return list(items[:i]), list(items[i:])
    return list(items), []


def demo_parser(doc: str, config_help: str):
    """The demos' argument parser: ``doc``'s first paragraph as description, the rest as
    epilog, the required ``--config`` (file or name) and ``--debug``."""
    import argparse

    from .cli import add_debug_argument

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     epilog=doc.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "--config-file", dest="config_file", metavar="FILE",
                        required=True, help=config_help)
    add_debug_argument(parser)
    return parser


def _has_extension(path: str, extensions: Sequence[str]) -> bool:
    return path.lower().endswith(tuple(extensions))


def _files_in(folder: str, extensions: Sequence[str]) -> List[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if _has_extension(name, extensions) and os.path.isfile(os.path.join(folder, name)))


def expand_inputs(patterns: Iterable[str], extensions: Sequence[str], what: str) -> List[str]:
    """Files named directly, the ``extensions`` files of each folder, and each glob's matches,
    in order and without repeats."""
    found: List[str] = []
    for pattern in patterns:
        if os.path.isfile(pattern):
            paths = [pattern]
        elif os.path.isdir(pattern):
            paths = _files_in(pattern, extensions)
            if not paths:
                raise UserError(f"the folder {pattern} contains no {what} files "
                                f"({', '.join(extensions)})")
        else:
            matches = sorted(glob.glob(pattern))
            paths = [p for p in matches if os.path.isfile(p)]
            for folder in (p for p in matches if os.path.isdir(p)):
                paths += _files_in(folder, extensions)
            if not paths:
                raise UserError(f"{what} input {pattern} does not exist (no such file or "
                                "folder, and no file matches it as a pattern)")
        found += [p for p in paths if p not in found]
    return found


def refuse_overwrite(output: str, inputs: Iterable[str]) -> None:
    """Raise if writing ``output`` would replace one of ``inputs``."""
    if not os.path.exists(output):
        return
    for path in inputs:
        if os.path.exists(path) and os.path.samefile(output, path):
            raise UserError(f"refusing to write {output}: it is the input {path}; "
                            "choose another --output")


def output_file(output: str, input_path: str, single: bool, extensions: Sequence[str],
                suffix: Optional[str] = None) -> str:
    """Where the result for ``input_path`` goes: ``output`` itself when it names a file of one
    of ``extensions`` and there is a single input, else ``output/<input name>`` (with
    ``suffix`` as its extension, if given); folders are created."""
    if single and not os.path.isdir(output) and _has_extension(output, extensions):
        path = output
    else:
        if os.path.isfile(output):
            files = f", or a file name ending in {', '.join(extensions)} for one" if extensions else ""
            raise UserError(f"--output {output} is a file; give a folder{files}")
        name = os.path.basename(input_path)
        if suffix:
            name = os.path.splitext(name)[0] + suffix
        path = os.path.join(output, name)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    refuse_overwrite(path, [input_path])
    return path


def open_video(path: str):
    """The PyAV container of ``path``, or a ``UserError`` naming it (missing, truncated,
    corrupt, no video stream)."""
    import av

    if not os.path.isfile(path):
        raise UserError(f"video input {path} does not exist")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise UserError(f"cannot read video {path}: {e}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} has no video stream")
    return container
