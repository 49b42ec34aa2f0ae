"""smoltune: fine-tune small language models with LoRA, orchestrated by Prefect.

smoltune run --config configs/default.yaml
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

__version__ = "0.1.0"


@cache
def code_version() -> str:
    """Version plus a hash of the library's source: part of every cache key, so that changing the code
    that produced a result invalidates it."""
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"
