"""Timing and memory helpers for ``hypergen bench``: wall clocks that wait for the device, summary statistics,
peak-memory probes and a log-log power-law fit."""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from typing import Any, Callable, Sequence

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, result)`` of one call, the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    position = (len(data) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return data[low] + (data[high] - data[low]) * (position - low)


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p10/p90 and quartiles (IQR) of a list of timings, in seconds, and how many there were."""
    values = [float(v) for v in seconds]
    return {
        "median_s": percentile(values, 50), "p10_s": percentile(values, 10), "p90_s": percentile(values, 90),
        "q1_s": percentile(values, 25), "q3_s": percentile(values, 75),
        "iqr_s": percentile(values, 75) - percentile(values, 25),
        "min_s": min(values) if values else float("nan"), "max_s": max(values) if values else float("nan"),
        "n": len(values),
    }


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of log y = b log x + log a; returns the exponent ``b``, ``a`` and R^2 of the log fit."""
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    n = len(lx)
    mx, my = sum(lx) / n, sum(ly) / n
    sxx = sum((v - mx) ** 2 for v in lx)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx if sxx else float("nan")
    intercept = my - slope * mx
    total = sum((v - my) ** 2 for v in ly)
    residual = sum((b - (intercept + slope * a)) ** 2 for a, b in zip(lx, ly))
    return {"exponent": slope, "coefficient_s": math.exp(intercept),
            "r2": 1.0 - residual / total if total else float("nan")}


def _rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``; psutil or ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - neither Linux nor psutil
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated during the path minus torch.cuda.memory_allocated just before it "
                "(bytes held by PyTorch tensors on the GPU; the frozen main model, loaded before, is excluded)")
    return ("process resident set size (/proc/self/statm) sampled every 2 ms by a background thread: peak during "
            "the path minus the RSS just before it (after gc and glibc malloc_trim). The frozen main model, loaded before, is excluded. Coarse: the "
            "allocator may reuse pages freed by an earlier path (under-counting) and RSS includes non-tensor memory")


def _malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc), so an RSS baseline is not inflated by an earlier path's garbage."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager: peak memory above the level at entry, in MiB (``delta_mib`` after exit)."""

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device = device
        self.interval_s = interval_s
        self.delta_mib = float("nan")
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        _malloc_trim()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = _rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.delta_mib = max(peak - self._base, 0) / 2 ** 20
