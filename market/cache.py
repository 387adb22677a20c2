"""Where the project keeps what it trains for its tasks' environments (the digit classifier
of Mental Rotation, the frozen options of Two Rooms), so that they are trained once.

`MARKET_CACHE` names the directory; by default `~/.cache/market`. Every file's name carries
what determines its contents (the training seed and a version), so a stale file is never
read in place of a new one; deleting the directory only costs the time to train again.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache directory (created on first use)."""
    root = Path(os.environ.get("MARKET_CACHE", Path.home() / ".cache" / "market"))
    root.mkdir(parents=True, exist_ok=True)
    return root
