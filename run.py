#!/usr/bin/env python
"""attn: train and compare fixation-guided attention models. See README.md and `python run.py -h`."""

import sys

from attn.cli import main

if __name__ == "__main__":
    sys.exit(main())
