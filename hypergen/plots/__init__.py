"""Plots of trained runs: training-loss curves (``loss``) and the generator's self-attention (``attention``).

``hypergen plot loss`` and ``hypergen plot attention`` call these. Importing this package is cheap (numpy only):
matplotlib (Agg backend) and torch are imported inside the functions that need them, so benchmark code can use
:func:`loss_variance` without them.
"""

from __future__ import annotations

from .loss import load_metrics, loss_variance

__all__ = ["load_metrics", "loss_variance"]
