"""Checkpoint files as bytes: the one safe reader, downloads, and atomic writes.

``load_file`` is revvision's only ``torch.load``: every checkpoint, whichever tool reads
it, goes through ``torch.load(weights_only=True)`` here, and every problem with the file
is one ``CheckpointError`` naming it.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ..errors import CheckpointError, CheckpointNotFoundError

PathLike = Union[str, os.PathLike]


def is_url(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(("http://", "https://"))


def cache_dir() -> str:
    """Where downloaded weights are kept: ``$REVVISION_CACHE``, else ``~/.cache/revvision``."""
    return os.environ.get("REVVISION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "revvision")


def download(url: str) -> str:
    """The local copy of ``url``, downloaded on first use (iopath's ``PathManager``, as in
    Detectron2) into ``cache_dir()/<path of the URL>``; later calls read the cached file."""
    try:  # imported here: `import backbones` needs torch only
        from iopath.common.file_io import HTTPURLHandler, PathManager
    except ImportError:
        raise CheckpointError(f"cannot download {url}: weights from a URL need iopath "
                              "(pip install iopath), or download the file and pass its "
                              "path") from None
    manager = PathManager()
    manager.register_handler(HTTPURLHandler())
    try:
        return manager.get_local_path(url, cache_dir=cache_dir())
    except OSError as e:  # urllib's HTTPError and URLError are OSErrors
        raise CheckpointError(f"cannot download {url}: {e}") from None


def load_file(path: PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    ``path`` may be an ``http(s)://`` URL (see ``download``). A missing file raises
    ``CheckpointNotFoundError``; a corrupt one, or one that would need arbitrary
    unpickling, ``CheckpointError``."""
    path = os.fspath(path)
    if is_url(path):
        path = download(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({e})") from None
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it needs {found.group(1)})" if found else ""
        raise CheckpointError(
            f"refusing to load {path}: the file contains arbitrary Python objects{what}, and "
            "unpickling them could run any code. revvision only loads weights_only files "
            "(tensors in dicts and lists, numbers, strings). If you trust the file, load it "
            "yourself with torch.load(..., weights_only=False) and re-save plain tensors, e.g. "
            "its state_dict.") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError) as e:
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path} ({os.path.getsize(path)} bytes) is truncated, corrupt or "
                              f"not a PyTorch checkpoint: {type(e).__name__}: {detail}") from None


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(binary_file)`` into a temporary file in the same folder,
    then rename it into place: an interrupted write never leaves a partial file under the
    final name, and the previous file stays intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through ``atomic_write``."""
    atomic_write(path, lambda f: torch.save(obj, f))
