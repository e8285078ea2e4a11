"""Reading and writing checkpoints, and building models from released weights.

Three layouts are read, told apart by their contents (``formats``): official SlowFast
``.pyth`` files, mmpretrain Rev-ViT state dicts and revvision checkpoints. Every file is
read with ``torch.load(weights_only=True)`` (``files``): files that would need arbitrary
unpickling are refused, never executed.

    model = backbones.load_pretrained("REV_VIT_B.pyth")              # architecture from the file
    model = backbones.load_pretrained("REV_VIT_B.pyth", input_size=(256, 256))  # pos-embed resized
    sd, cfg = backbones.read_state_dict("REV_MVIT_B.pyth")            # revvision names, ModelConfig
    model = backbones.load_pretrained("https://dl.fbaipublicfiles.com/pyslowfast/rev/REV_VIT_B.pyth")

Every reader also takes an ``http(s)://`` URL: the file is downloaded once into the cache
(``$REVVISION_CACHE``, else ``~/.cache/revvision``) and read from there afterwards.

The modules, one job each:

* ``files``: the one safe ``torch.load``, downloads, atomic writes;
* ``formats``: telling the layouts apart and converting them to revvision names;
* ``pos_embed``: fitting position embeddings to a model (class token, grid resizing);
* ``loading``: ``load_pretrained`` / ``load_checkpoint`` and their key reports;
* ``saving``: ``save_checkpoint``.
"""

from ..errors import CheckpointError, CheckpointNotFoundError, KeyMismatchError
from .files import atomic_save, atomic_write, cache_dir, download, is_url, load_file
from .formats import (Checkpoint, config_from_dict, parse_checkpoint, read_checkpoint,
                      read_state_dict)
from .loading import (LoadReport, _load_into, config_for, load_checkpoint, load_pretrained,
                      model_from_checkpoint)
from .saving import save_checkpoint

__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointNotFoundError", "KeyMismatchError", "LoadReport",
    "atomic_save", "atomic_write", "cache_dir", "config_for", "config_from_dict", "download",
    "is_url", "load_checkpoint", "load_file", "load_pretrained", "model_from_checkpoint",
    "parse_checkpoint", "read_checkpoint", "read_state_dict", "save_checkpoint",
]
