"""Prefix attention: eager (T5's matmul-softmax-matmul) vs scaled_dot_product_attention, on this machine.

One prefix self-attention call (:func:`hypergen.components.targets.prefix.prefix_attention_forward`, the kernel
alone, without the projections around it, which are the same for both) at the tiny and the T5-Large widths: the
main model's encoder self-attention at the recipes' micro-batch and input length, and one cached decoding step.
Times a forward call without gradients (evaluation, generation) and a forward + backward call with gradients to the
prefixes and the query (training) for each kernel, the kernels interleaved round by round, and reports the fastest
of ``--repeats`` after one warm-up (the least disturbed by other processes on a shared machine). Writes the table
to stdout (markdown) and, with ``--out``, to a file.

    PYTHONPATH=. python benchmarks/sdpa.py --threads 2 --out benchmarks/results/throughput_sdpa.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hypergen.models.prefix_attention import KERNEL_ATTRIBUTE, PREFIX_ATTRIBUTE, prefix_attention_forward

# name -> (heads, d_kv, prefix length, batch, query tokens, key tokens): the main model's encoder self-attention at
# the recipes' micro-batch and input length, and one cached decoding step (query 1, the keys decoded so far)
SHAPES = {
    "tiny encoder": (4, 32, 8, 32, 32, 32),
    "tiny decode step": (4, 32, 8, 32, 1, 12),
    "t5-large encoder": (16, 64, 32, 8, 384, 384),
    "t5-large decode step": (16, 64, 32, 8, 1, 128),
}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, repeats: int) -> dict[str, float]:
    """Fastest seconds of one prefix self-attention call (and of its backward to the prefixes and the query) with
    each kernel, for shape ``name``; T5's bias on the real keys, half the rows padded (a causal mask for a step)."""
    heads, d_kv, length, batch, q_len, k_len = SHAPES[name]
    gen = torch.Generator().manual_seed(1)
    module = torch.nn.Module()  # stands in for a T5 SelfAttention: the attributes the attention function reads
    module.training = False
    query, key, value = (torch.randn(batch, heads, n, d_kv, generator=gen) for n in (q_len, k_len, k_len))
    bias = torch.randn(1, heads, q_len, k_len, generator=gen)
    mask = torch.zeros(batch, 1, q_len, k_len)
    mask[batch // 2:, ..., k_len * 3 // 4:] = torch.finfo(torch.float32).min
    prefix = [torch.randn(batch, heads, length, d_kv, generator=gen).requires_grad_() for _ in range(2)]
    query.requires_grad_()
    times: dict[str, list[float]] = {}

    def call(kernel: str) -> torch.Tensor:
        setattr(module, KERNEL_ATTRIBUTE, kernel)
        setattr(module, PREFIX_ATTRIBUTE, tuple(prefix))
        return prefix_attention_forward(module, query, key, value, mask, scaling=1.0, position_bias=bias)[0]

    def forward(kernel: str) -> None:
        with torch.no_grad():
            call(kernel)

    def train_step(kernel: str) -> None:
        call(kernel).sum().backward()

    for i in range(repeats + 1):  # the first round is the warm-up; the kernels interleaved round by round
        for kernel in ("eager", "sdpa"):
            for part, fn in (("forward", forward), ("train", train_step)):
                elapsed = _seconds(lambda: fn(kernel))
                if i:
                    times.setdefault(f"{kernel}_{part}", []).append(elapsed)
    return {key: min(values) for key, values in times.items()}


def table(results: dict[str, dict[str, float]], threads: int) -> str:
    lines = [f"torch {torch.__version__}, {threads} threads, fastest of the repeats (ms); speedup = eager / sdpa", "",
             "| shape | B x H x q x (prefix + keys) x d_kv | eager fwd | sdpa fwd | speedup | eager fwd+bwd | sdpa fwd+bwd "
             "| speedup |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        heads, d_kv, length, batch, q_len, k_len = SHAPES[name]
        lines.append(
            f"| {name} | {batch} x {heads} x {q_len} x ({length} + {k_len}) x {d_kv} | {1e3 * r['eager_forward']:.2f} | "
            f"{1e3 * r['sdpa_forward']:.2f} | {r['eager_forward'] / r['sdpa_forward']:.2f}x | "
            f"{1e3 * r['eager_train']:.2f} | {1e3 * r['sdpa_train']:.2f} | "
            f"{r['eager_train'] / r['sdpa_train']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: measure(name, args.repeats) for name in args.shapes}
    text = table(results, torch.get_num_threads())
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
