"""Writing figures: matplotlib with the Agg backend, imported on first use; PNGs written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported here, not at module import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG at ``path``, atomically (rendered in memory, then written beside it and renamed);
    closes it."""
    from ..io import atomic_write_bytes  # here: hypergen.io imports torch, this package does not

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
