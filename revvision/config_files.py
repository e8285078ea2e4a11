"""Finding and merging the config a ``--config`` value names, with errors a user can act on.

A ``--config`` value is a path (relative to the working directory, or absolute), or the name
of one of revvision's own configs: ``coco_revmvit.yaml``, ``coco_revmvit`` or
``configs/coco_revmvit.yaml`` all find it from any working directory. revvision's configs
are the repository's ``configs/`` folder in a checkout or an editable install; a regular
install carries a copy inside the package (``revvision/configs``, see setup.py).
Configs found either way keep their ``_BASE_`` inheritance, which is relative to the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

from backbones.errors import UserError

from .cli import describe

_PACKAGED = Path(__file__).resolve().parent / "configs"  # a regular install
_CHECKOUT = Path(__file__).resolve().parents[1] / "configs"  # a checkout or editable install


def config_dir() -> Path:
    """The folder holding revvision's own configs."""
    return _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT


def config_names() -> List[str]:
    """The names ``--config`` accepts without a path, e.g. ``coco_revmvit.yaml``."""
    return sorted(p.name for p in config_dir().glob("*.yaml"))


def resolve_config(value: str) -> Path:
    """The file ``value`` names: an existing path first, else one of revvision's configs."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    name = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    if name.name and not path.is_absolute():
        own = config_dir() / (name if name.suffix else name.with_suffix(".yaml"))
        if own.is_file():
            return own
    raise UserError(
        f"config {value!r} not found: it is neither a file (looked in {os.getcwd()}) nor one "
        f"of revvision's configs ({config_dir()}). Available: {', '.join(config_names())}. "
        "Give a path to a YAML file or one of these names.")


def choose_config(value: Optional[str], default: str, default_reason: str) -> Tuple[Path, str]:
    """``(file, why it was chosen)`` for a ``--config`` value, or ``default`` without one."""
    if not value:
        return resolve_config(default), f"no --config given: {default_reason}"
    where = "a file" if Path(value).expanduser().is_file() else "one of revvision's configs"
    return resolve_config(value), f"--config {value}: {where}"


def merge_config(cfg, config_file: os.PathLike, opts: Sequence[str] = ()):
    """Merge a config file, then ``KEY VALUE`` overrides, into ``cfg``; return ``cfg``.

    yacs reports a bad key or value as a ``KeyError``, ``ValueError`` or ``AssertionError``,
    PyYAML a malformed file as a ``YAMLError``, fvcore a missing ``_BASE_`` as a
    ``FileNotFoundError``; each becomes one ``UserError`` naming the file or the override,
    and the key.
    """
    try:
        cfg.merge_from_file(str(config_file))
    except FileNotFoundError as e:  # the file itself exists: one of its _BASE_ files is missing
        raise UserError(f"config {config_file}: the _BASE_ file {e.filename} does not exist "
                        "(a relative _BASE_ is taken from the including file's folder)") from None
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as e:
        raise UserError(f"config {config_file}: {describe(e)}. Fix the file (valid keys and "
                        "their types are the defaults in revdet/config.py, revvideo/config.py "
                        "and Detectron2's config/defaults.py).") from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise UserError(f"command-line override: {describe(e)} (after {config_file}). "
                        "Overrides are KEY VALUE pairs of existing keys.") from None
    return cfg
