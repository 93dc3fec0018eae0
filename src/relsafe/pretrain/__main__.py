"""``python -m relsafe.pretrain``: the same command as ``relsafe pretrain``."""

from __future__ import annotations

import sys

from relsafe.pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
