"""revvision backbones: Rev-ViT, Rev-MViT (images and video) and their non-reversible twins.

    import backbones
    model = backbones.build("rev_mvit_b", num_classes=80)
    logits = model(images)                  # (B, 3, H, W) -> (B, num_classes)
    maps = model.forward_stages(images)     # stride 4, 8, 16, 32 feature maps
    model = backbones.load_pretrained("REV_MVIT_B.pyth")   # released weights, exact architecture

Imports torch only.
"""

from .checkpoint import (CheckpointError, KeyMismatchError, load_checkpoint, load_pretrained,
                         read_state_dict, save_checkpoint)
from .mvit import ModelConfig, MViT, plan_layers
from .reversible import run_reversible
from .zoo import build, build_from_config, list_models, model_config

__all__ = ["ModelConfig", "MViT", "build", "build_from_config", "list_models", "model_config",
           "plan_layers", "run_reversible",
           "CheckpointError", "KeyMismatchError", "load_checkpoint", "load_pretrained",
           "read_state_dict", "save_checkpoint"]
