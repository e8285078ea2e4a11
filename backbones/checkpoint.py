"""Reading and writing checkpoints, and building models from released weights.

Three formats are read, told apart by their contents:

* official SlowFast ``.pyth``: ``{"model_state", "cfg" (YAML string), "epoch", "optimizer_state"}``;
  the architecture comes from the embedded config;
* mmpretrain Rev-ViT: a bare state dict (or ``{"state_dict": ...}``) with ``backbone.*`` /
  ``head.fc.*`` names and fused ``qkv``; the architecture is read off the tensors;
* revvision: ``{"model": state_dict, "model_config": dataclasses.asdict(ModelConfig), ...}``,
  as written by ``save_checkpoint``.

A bare state dict in official or revvision names is accepted too (the architecture then
comes from ``name``). Every file is read with ``torch.load(weights_only=True)``: files that
would need arbitrary unpickling are refused, never executed.

    model = backbones.load_pretrained("REV_VIT_B.pyth")              # architecture from the file
    model = backbones.load_pretrained("REV_VIT_B.pyth", input_size=(256, 256))  # pos-embed resized
    sd, cfg = backbones.read_state_dict("REV_MVIT_B.pyth")            # revvision names, ModelConfig
    model = backbones.load_pretrained("https://dl.fbaipublicfiles.com/pyslowfast/rev/REV_VIT_B.pyth")

Every reader also takes an ``http(s)://`` URL: the file is downloaded once into the cache
(``$REVVISION_CACHE``, else ``~/.cache/revvision``) and read from there afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from .layers import resize_pos_embed
from .mmpretrain import config_from_mmpretrain, from_mmpretrain_keys, is_mmpretrain
from .mvit import ModelConfig, MViT, plan_layers
from .errors import UserError
from .official import (IGNORED_KEYS, OFFICIAL_PREFIX, config_from_official,
                       from_official_keys)
from .zoo import list_models, model_config, resolve_name

PathLike = Union[str, os.PathLike]

# Settings that only matter for training: a ``name`` may differ from an embedded config in these.
_TRAINING_FIELDS = {"input_size", "num_classes", "drop_path_rate", "dropout", "head_dropout"}
_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_MAX_LISTED = 50


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


class KeyMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped keys; the lists are attributes."""

    def __init__(self, message: str, missing: List[str], unexpected: List[str],
                 mismatched: List[Tuple[str, tuple, tuple]]):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


class LoadReport(NamedTuple):
    """What ``load_checkpoint`` did: keys it could not load, and position embeddings it resized.

    ``mismatched`` holds ``(key, checkpoint_shape, model_shape)``.
    """

    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, tuple, tuple]]
    resized: List[Tuple[str, tuple, tuple]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


@dataclass
class Checkpoint:
    """A checkpoint file's contents: weights in revvision names and, if known, the architecture."""

    path: str
    format: str  # "official" | "mmpretrain" | "revvision"
    state_dict: Dict[str, torch.Tensor]
    config: Optional[ModelConfig]  # None: the file does not say (bare state dict)
    extra: Dict[str, Any] = field(default_factory=dict)  # e.g. epoch, official_cfg


# ---------------------------------------------------------------------------------- reading
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

    ``path`` may be an ``http(s)://`` URL (see ``download``)."""
    path = os.fspath(path)
    if is_url(path):
        path = download(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
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


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        more = f" ... ({len(keys)} in all)" if len(keys) > 12 else ""
        return f"keys {[str(k) for k in keys[:12]]}{more}"
    return f"a {type(obj).__name__}"


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DistributedDataParallel adds, if every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """``ModelConfig`` from ``dataclasses.asdict`` output (lists back to tuples where declared)."""
    unknown = sorted(set(data) - set(_CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown model_config field(s) {unknown}")
    values = {}
    for key, value in data.items():
        default = _CONFIG_FIELDS[key].default
        values[key] = tuple(value) if isinstance(default, tuple) and value is not None else value
    config = ModelConfig(**values)
    config.validate()
    return config


def parse_checkpoint(obj: Any, path: PathLike = "<checkpoint>") -> Checkpoint:
    """Recognise the format of a loaded checkpoint object and normalise it."""
    path = os.fspath(path)
    if isinstance(obj, Mapping) and "model_state" in obj:  # official SlowFast
        state = obj["model_state"]
        if not _is_state_dict(state):
            raise CheckpointError(f"{path}: 'model_state' is not a state dict ({_describe(state)})")
        config, extra = None, {}
        if isinstance(obj.get("cfg"), str):
            import yaml  # only needed here: keeps `import backbones` torch-only

            try:
                config = config_from_official(yaml.safe_load(obj["cfg"]))
            except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
                raise CheckpointError(f"{path}: cannot use its embedded config: "
                                      f"{type(e).__name__}: {e}") from None
            extra["official_cfg"] = obj["cfg"]
        if "epoch" in obj:
            extra["epoch"] = obj["epoch"]
        state = from_official_keys(_strip_module_prefix(state))
        return Checkpoint(path, "official", state, config, extra)

    if isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):  # revvision
        config = None
        if obj.get("model_config") is not None:
            try:
                config = config_from_dict(obj["model_config"])
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: invalid model_config: {e}") from None
        state = _strip_module_prefix(obj["model"])
        if is_mmpretrain(state) or any(k.startswith(OFFICIAL_PREFIX) for k in state):
            raise CheckpointError(f"{path}: 'model' holds official or mmpretrain key names; "
                                  "revvision checkpoints use revvision names")
        extra = {k: obj[k] for k in ("epoch", "iteration", "official_cfg") if k in obj}
        return Checkpoint(path, "revvision", state, config, extra)

    if isinstance(obj, Mapping) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        obj = obj["state_dict"]  # mmengine's {"meta", "state_dict", ...} wrapper

    if _is_state_dict(obj):  # a bare state dict: tell the naming scheme by its keys
        state = _strip_module_prefix(obj)
        if is_mmpretrain(state):
            try:
                state = from_mmpretrain_keys(state)
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}") from None
            return Checkpoint(path, "mmpretrain", state, None)
        if any(k.startswith(OFFICIAL_PREFIX) for k in state):
            return Checkpoint(path, "official", from_official_keys(state), None)
        if any(k.startswith("layers.") or k.startswith("patch_embed.") for k in state):
            return Checkpoint(path, "revvision", state, None)
    raise CheckpointError(
        f"{path}: unknown checkpoint format; expected an official .pyth ('model_state', 'cfg'), "
        f"a revvision checkpoint ('model', 'model_config') or an mmpretrain Rev-ViT state dict "
        f"('backbone.*', 'head.fc.*'), but found {_describe(obj)}")


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read any supported checkpoint file (see the module docstring)."""
    return parse_checkpoint(load_file(path), path)


def read_state_dict(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Optional[ModelConfig]]:
    """Weights of ``path`` in revvision key names, and its architecture if the file says.

    Class-token keys are dropped, as is a class-token row of an official ``pos_embed``.
    The config is ``None`` for a bare state dict, and for an mmpretrain file whose number
    of heads cannot be inferred (no zoo Rev-ViT of that width).
    """
    ckpt = read_checkpoint(path)
    config = ckpt.config
    if config is None and ckpt.format == "mmpretrain":
        try:
            config = config_from_mmpretrain(ckpt.state_dict)
        except ValueError:
            config = None
    return _drop_class_token(ckpt.state_dict, config), config


# ----------------------------------------------------------------- position embeddings
def _square(n: int) -> Optional[int]:
    side = math.isqrt(n)
    return side if side * side == n else None


def _drop_class_token(state: Dict[str, torch.Tensor],
                      config: Optional[ModelConfig]) -> Dict[str, torch.Tensor]:
    """Drop class-token keys, and the class-token row of a ``pos_embed`` that has one."""
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    pos = state.get("pos_embed")
    if pos is None or pos.dim() != 3:
        return state
    n = pos.shape[1]
    if config is not None:
        has_cls = n == math.prod(config.patch_grid) + 1
    else:  # images: a square grid plus one
        has_cls = _square(n) is None and _square(n - 1) is not None
    if has_cls:
        state["pos_embed"] = pos[:, 1:]
    return state


def _source_grid(key: str, tensor: torch.Tensor, config: Optional[ModelConfig],
                 target: Tuple[int, int, int]) -> Optional[Tuple[int, ...]]:
    """The token grid a checkpoint's position embedding was laid out on."""
    n = tensor.shape[1]
    if key == "pos_embed_temporal":
        return (n,)
    if config is not None:
        t, h, w = config.patch_grid
        grid = (h, w) if key == "pos_embed_spatial" else (t, h, w)
        if math.prod(grid) == n:
            return grid
    t = 1 if key == "pos_embed_spatial" else target[0]
    if n % t == 0 and _square(n // t):
        side = _square(n // t)
        return (side, side) if key == "pos_embed_spatial" else (t, side, side)
    return None


def _resize_grid(pos: torch.Tensor, src: Tuple[int, int, int],
                 dst: Tuple[int, int, int]) -> torch.Tensor:
    """Resize a joint (T, H, W) embedding: bicubic over space per frame, then linear over time."""
    (t, h, w), (t2, h2, w2) = src, dst
    c = pos.shape[-1]
    frames = pos.reshape(t, h * w, c)
    frames = torch.cat([resize_pos_embed(f[None], (h, w), (h2, w2), "bicubic") for f in frames])
    if t != t2:
        flat = frames.reshape(1, t, h2 * w2 * c)
        frames = resize_pos_embed(flat, (t,), (t2,), "linear").reshape(t2, h2 * w2, c)
    return frames.reshape(1, t2 * h2 * w2, c)


def _resize_pos_embeds(state: Dict[str, torch.Tensor], model: MViT,
                       config: Optional[ModelConfig]) -> List[Tuple[str, tuple, tuple]]:
    """Resize position embeddings in place to ``model``'s token grid; return what changed."""
    target = model.cfg.patch_grid
    own = model.state_dict()
    resized = []
    for key in ("pos_embed", "pos_embed_spatial", "pos_embed_temporal"):
        if key not in state or key not in own:
            continue
        pos, want = state[key], own[key]
        if pos.shape == want.shape or pos.dim() != 3 or pos.shape[-1] != want.shape[-1]:
            continue
        src = _source_grid(key, pos, config, target)
        if src is None:
            continue  # reported as mis-shaped
        if key == "pos_embed_temporal":
            new = resize_pos_embed(pos, src, target[:1], "linear")
        elif key == "pos_embed_spatial":
            new = resize_pos_embed(pos, src, target[1:], "bicubic")
        else:
            src3 = src if len(src) == 3 else (1, *src)
            new = _resize_grid(pos, src3, target)
        if new.shape == want.shape:
            state[key] = new
            resized.append((key, tuple(pos.shape), tuple(new.shape)))
    return resized


# ---------------------------------------------------------------------------------- loading
def _listing(title: str, items: List[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "".join(f"    {s}\n" for s in shown).rstrip("\n") + more


def _load_into(model: MViT, ckpt: Checkpoint, strict: bool) -> LoadReport:
    state = _drop_class_token(ckpt.state_dict, ckpt.config)
    resized = _resize_pos_embeds(state, model, ckpt.config)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    report = LoadReport(missing, unexpected, mismatched, resized)
    if not report.ok:
        parts = [f"the weights in {ckpt.path} ({ckpt.format} format) do not fit the model:"]
        if missing:
            parts.append(_listing("missing from the checkpoint", missing))
        if unexpected:
            parts.append(_listing("unexpected (not in the model)", unexpected))
        if mismatched:
            parts.append(_listing("shape mismatch (checkpoint vs model)",
                                  [f"{k}: {list(a)} vs {list(b)}" for k, a, b in mismatched]))
        message = "\n".join(parts)
        if strict:
            raise KeyMismatchError(message + "\n(strict=False loads the rest and reports these)",
                                   missing, unexpected, mismatched)
        warnings.warn(message, stacklevel=3)
    skip = {k for k, _, _ in mismatched}
    loadable = {k: v for k, v in state.items() if k in own and k not in skip}
    model.load_state_dict(loadable, strict=False)
    return report


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True) -> LoadReport:
    """Load the weights of any supported checkpoint file into an existing ``MViT``.

    Class-token keys and optimizer state are ignored; position embeddings are resized
    (bicubic over space, linear over time) to the model's token grid. Missing, unexpected
    or mis-shaped keys raise one ``KeyMismatchError`` listing them; with ``strict=False``
    the matching weights are loaded and the rest is reported (a warning and the returned
    ``LoadReport``).
    """
    if not isinstance(model, MViT):
        raise TypeError(f"load_checkpoint expects a revvision MViT, got {type(model).__name__}")
    return _load_into(model, read_checkpoint(path), strict)


def _architecture(config: ModelConfig) -> Dict[str, Any]:
    """The fields that shape the network; settings with no effect on it (e.g. the fusion
    of a model without stage transitions) are left out."""
    view = {f: _normal(getattr(config, f)) for f in _CONFIG_FIELDS if f not in _TRAINING_FIELDS}
    if not any(s.kind == "transition" for s in plan_layers(config)):
        del view["fusion"]
    if not (config.pool_q_stride or config.pool_kv_stride_adaptive):
        del view["pool_kernel"]
    return view


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _check_name(config: ModelConfig, name: str, path: str) -> None:
    mine, want = _architecture(config), _architecture(model_config(name))
    differ = [f"{f}: file {mine.get(f)!r}, {name} {want.get(f)!r}"
              for f in sorted(set(mine) | set(want)) if mine.get(f) != want.get(f)]
    if differ:
        raise CheckpointError(f"{path} holds a different architecture than {name!r}:\n  "
                              + "\n  ".join(differ))


def config_for(ckpt: Checkpoint, name: Optional[str] = None, **overrides) -> ModelConfig:
    """The architecture to build for ``ckpt``: its own config, else inferred or from ``name``."""
    unknown = sorted(set(overrides) - set(_CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown}; valid: {sorted(_CONFIG_FIELDS)}")
    if name is not None:
        name = resolve_name(name)  # KeyError for unknown names
    if ckpt.config is not None:
        if name is not None:
            _check_name(ckpt.config, name, ckpt.path)
        config = dataclasses.replace(ckpt.config, **overrides)
    elif ckpt.format == "mmpretrain":
        try:
            config = config_from_mmpretrain(ckpt.state_dict, name, **overrides)
        except ValueError as e:
            raise CheckpointError(f"{ckpt.path} (mmpretrain format): {e}") from None
    elif name is not None:
        head = ckpt.state_dict.get("head.projection.weight")
        classes = {"num_classes": head.shape[0]} if head is not None else {}
        config = model_config(name, **{**classes, **overrides})
    else:
        raise CheckpointError(f"{ckpt.path} is a bare state dict that does not say which "
                              f"architecture it is: pass name=... (one of {', '.join(list_models())})")
    config.validate()
    return config


def model_from_checkpoint(ckpt: Checkpoint, name: Optional[str] = None, *, strict: bool = True,
                          rev_backprop: bool = True, recompute_transitions: bool = False,
                          **overrides) -> MViT:
    """``load_pretrained`` for an already read ``Checkpoint``."""
    model = MViT(config_for(ckpt, name, **overrides), rev_backprop=rev_backprop,
                 recompute_transitions=recompute_transitions)
    _load_into(model, ckpt, strict)
    return model


def load_pretrained(path: PathLike, name: Optional[str] = None, *, strict: bool = True,
                    rev_backprop: bool = True, recompute_transitions: bool = False,
                    **overrides) -> MViT:
    """Build the architecture a checkpoint file holds and load its weights.

    The architecture comes from the file's embedded config (official ``.pyth``, revvision
    checkpoints), from its tensors (mmpretrain; heads from ``name`` or the zoo), or from
    ``name`` (bare state dicts). ``overrides`` are ``ModelConfig`` fields, e.g.
    ``input_size=(256, 256)`` (position embeddings are resized) or ``drop_path_rate=0.1``
    for fine-tuning. Given with an embedded config, ``name`` must agree with it. The model
    is returned in training mode, like any new module: call ``.eval()`` to evaluate.
    ``rev_backprop`` and ``recompute_transitions`` are as for ``backbones.build``.
    """
    return model_from_checkpoint(read_checkpoint(path), name, strict=strict,
                                 rev_backprop=rev_backprop,
                                 recompute_transitions=recompute_transitions, **overrides)


# ---------------------------------------------------------------------------------- writing
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size, torch.device)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse values ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold only tensors and "
                        "plain data (dicts, lists, numbers, strings) so that they load with "
                        "weights_only=True")


def save_checkpoint(path: PathLike, model: Union[nn.Module, Mapping[str, torch.Tensor]],
                    config: Optional[ModelConfig] = None, **extra) -> None:
    """Write a revvision checkpoint atomically (a temporary file in the same folder, then rename).

    ``model`` is an ``MViT`` (its config is stored) or a state dict in revvision names (pass
    ``config``). ``extra`` adds training state such as ``optimizer=opt.state_dict()``,
    ``epoch=3``; it must be plain data.
    """
    if isinstance(model, nn.Module):
        state = model.state_dict()
        config = config if config is not None else getattr(model, "cfg", None)
    else:
        state = dict(model)
    reserved = sorted({"model", "model_config"} & set(extra))
    if reserved:
        raise TypeError(f"{reserved} are written by save_checkpoint itself")
    payload: Dict[str, Any] = {"model": state}
    if config is not None:
        payload["model_config"] = dataclasses.asdict(config)
    payload.update(extra)
    _check_plain(payload, "checkpoint")
    atomic_save(payload, path)


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
