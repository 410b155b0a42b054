"""``hypergen bench``: adaptation latency of the hypernetwork against backprop fine-tuning (see runner.py)."""

from .report import format_table, plot, write_outputs
from .runner import SIZES, BenchConfig, run_bench

__all__ = ["SIZES", "BenchConfig", "format_table", "plot", "run_bench", "write_outputs"]
