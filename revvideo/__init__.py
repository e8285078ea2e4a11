"""revvideo: Rev-MViT video classification on PyTorchVideo data (Kinetics and a synthetic set).

    import revvideo                         # first: fixes pytorchvideo's torchvision import
    cfg = revvideo.get_cfg()
    cfg.merge_from_file("configs/kinetics_revmvit_b_16x4.yaml")
    model = revvideo.build_model(cfg)       # a backbones MViT: (B, 3, T, H, W) -> logits
    loader = revvideo.build_train_loader(cfg)

Training and evaluation run through tools/train_video.py (``revvideo.engine``).
Importing it also lets fvcore's FLOP counter count fused attention
(``backbones.flops.register_fvcore_handles``).
"""

from . import compat

compat.apply()  # before anything imports pytorchvideo.transforms

from .config import get_cfg  # noqa: E402
from .data import (DatasetError, EpochLoop, VideoDataset, VideoList, build_test_dataset,  # noqa: E402
                   build_test_loader, build_train_dataset, build_train_loader, read_video_list)
from .multiview import MultiViewEvaluator, TestViews, ViewScores, official_clip_indices  # noqa: E402
from .transforms import BatchMix, soft_cross_entropy, train_transform  # noqa: E402

from backbones.flops import register_fvcore_handles  # noqa: E402

register_fvcore_handles()  # fvcore's FLOP counter then counts fused attention

__all__ = [
    "BatchMix", "DatasetError", "EpochLoop", "MultiViewEvaluator", "TestViews", "VideoDataset",
    "VideoList", "ViewScores", "build_test_dataset", "build_test_loader", "build_train_dataset",
    "build_train_loader", "get_cfg", "official_clip_indices", "read_video_list",
    "soft_cross_entropy", "train_transform",
]
