"""Where deepfusion keeps what it caches: converted weights, compiled extensions.

`DEEPFUSION_CACHE` overrides the default, the project's ignored `.cache/` folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cache_dir(create: bool = True) -> Path:
    """Where converted weights and compiled extensions are cached (ignored by git)."""
    path = Path(os.environ.get("DEEPFUSION_CACHE", project_root() / ".cache"))
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
