"""``hypergen bench``: adaptation latency of the hypernetworks against backprop fine-tuning (see runner.py)."""

from .report import format_table, plot, write_outputs
from .runner import run_bench
from .setup import SIZES, BenchConfig

__all__ = ["SIZES", "BenchConfig", "format_table", "plot", "run_bench", "write_outputs"]
