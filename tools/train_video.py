#!/usr/bin/env python
"""``revvision-train-video`` from a checkout: see revvision/train_video.py or ``--help``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout

from revvision.train_video import cli  # noqa: E402

if __name__ == "__main__":
    cli()
