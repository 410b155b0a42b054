"""hypergen-blocks: an example hypergen plugin.

Registers, through entry points (see ``pyproject.toml``), the generator ``blockwise.v1`` and the regularizer
``ema_consistency.v1``. Nothing here touches hypergen's registries at import time: hypergen loads the entry points
itself, so importing this package has no side effect.
"""

from .generators import BlockwiseGenerator
from .regularizers import EMAConsistency

__all__ = ["BlockwiseGenerator", "EMAConsistency"]
__version__ = "0.1.0"
