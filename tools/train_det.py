#!/usr/bin/env python
"""``revvision-train-det`` from a checkout: see revvision/train_det.py or ``--help``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout

from revvision.train_det import cli  # noqa: E402

if __name__ == "__main__":
    cli()
