"""How fast training runs against what the device could do: examples/s, tokens/s, achieved FLOP/s, utilisation.

The FLOP count of a micro-batch's forward and backward passes is counted from the shapes of its matrix products
(``torch.utils.flop_counter.FlopCounterMode``: 2*m*n*k per (m x k)@(k x n) product, attention's two products
included, backward products as they run: for a frozen main model only the activation gradients, for the trained
hypernetwork the weight gradients too; elementwise ops, softmax and norms are not counted). Counting slows a pass
down, so it is done once, on the run's first micro-batch; every later micro-batch is estimated from it in
proportion to its tokens (demo, input and target tokens together), the 6*params*tokens rule's scaling.

The peak is the device's dense matrix throughput in the precision trained in: a table of common GPUs (vendor
datasheets, dense, no sparsity), and for a CPU or a card not in the table a measured float32 (or bfloat16) matmul,
timed once per process.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data.collate import Batch

RATE_KEYS = ("examples_per_s", "tokens_per_s", "flops_per_s", "utilisation")  # what Throughput.rates returns

# dense peak TFLOP/s: (bf16 tensor cores, fp32 without TF32), by a substring of torch.cuda.get_device_name()
GPU_PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "L4": (121.0, 30.3),
    "A10G": (70.0, 31.2),
    "A10": (125.0, 31.2),
    "RTX 4090": (165.0, 82.6),
    "RTX 3090": (71.0, 35.6),
    "V100": (125.0, 15.7),  # no bf16: its fp16 tensor cores
    "T4": (65.0, 8.1),      # no bf16: its fp16 tensor cores
}


def batch_tokens(batch: Batch) -> int:
    """The tokens a micro-batch feeds the models: demo tokens (T x n_d) plus input and target tokens (B x n_x,
    B x n_y), padding included (it is computed on)."""
    tokens = batch.demo_ids.numel() + batch.input_ids.numel()
    return tokens + (batch.labels.numel() if batch.labels is not None else 0)


def peak_flops(device: torch.device, bf16: bool) -> tuple[float, str]:
    """(dense matmul FLOP/s of ``device`` in bf16 or fp32, where the number comes from: "table" or "measured")."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16_peak, fp32_peak) in GPU_PEAK_TFLOPS.items():
            if key in name:
                return (bf16_peak if bf16 else fp32_peak) * 1e12, "table"
    return measured_matmul_flops(str(device), torch.bfloat16 if bf16 else torch.float32), "measured"


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(device: str, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of repeated (size x size) @ (size x size) products on ``device``, timed for about ``seconds`` after
    one warm-up product; measured once per process and device."""
    generator = torch.Generator(device).manual_seed(0)  # the global RNG (checkpointed, dropout's) is left alone
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    products, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        products += 1
        if products % 8 == 0:
            sync()
    sync()
    return 2 * size**3 * products / (time.perf_counter() - started)


class Throughput:
    """Counts a run's work and turns it into rates since it started: :meth:`measure` around each micro-batch's
    forward and backward, :meth:`rates` when logging."""

    def __init__(self, device: torch.device, bf16: bool) -> None:
        self.peak, self.peak_source = peak_flops(device, bf16)
        self.flops_per_token: float | None = None  # from the first micro-batch
        self.tokens, self.flops = 0, 0.0

    @contextmanager
    def measure(self, batch: Batch) -> Iterator[None]:
        """Around one micro-batch's forward and backward: its tokens and FLOPs (counted the first time)."""
        tokens = batch_tokens(batch)
        if self.flops_per_token is None:
            with FlopCounterMode(display=False) as counter:
                yield
            self.flops_per_token = counter.get_total_flops() / max(tokens, 1)
        else:
            yield
        self.tokens += tokens
        self.flops += self.flops_per_token * tokens

    def rates(self, examples: int, seconds: float, world_size: int = 1) -> dict[str, float]:
        """Examples/s, tokens/s and FLOP/s of all ``world_size`` processes over ``seconds`` (``examples``: theirs;
        the tokens and FLOPs: this process's, times ``world_size``), and the utilisation of their devices' peak."""
        seconds = max(seconds, 1e-9)
        flops_per_s = self.flops * world_size / seconds
        return {"examples_per_s": examples / seconds, "tokens_per_s": self.tokens * world_size / seconds,
                "flops_per_s": flops_per_s, "utilisation": flops_per_s / (self.peak * world_size)}
