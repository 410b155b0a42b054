"""nn.Linear (x @ W^T) against W @ x^T for a few rows, with the weights coming from memory (30 distinct ones, cycled,
so that none stays in cache): what hypergen/models/few_rows.py's threshold is chosen from.

    PYTHONPATH=. python benchmarks/few_rows.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F


def per_call_ms(product, rows: int, out: int, inn: int, weights: int = 30) -> float:
    ws = [torch.randn(out, inn) for _ in range(weights)]
    x = torch.randn(rows, inn)
    for w in ws:  # warm-up
        product(x, w)
    started = time.perf_counter()
    for _ in range(2):
        for w in ws:
            product(x, w)
    return (time.perf_counter() - started) / (2 * weights) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    linear = lambda x, w: F.linear(x, w)  # noqa: E731
    rows_first = lambda x, w: torch.mm(w, x.t()).t().contiguous()  # noqa: E731
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| weight (out x in) | rows | nn.Linear (ms) | W @ x^T (ms) |")
    print("|---|---|---|---|")
    for out, inn in ((2816, 1024), (1024, 1024), (128, 128)):
        for rows in (2, 8, 64, 256, 1024):
            print(f"| {out} x {inn} | {rows} | {per_call_ms(linear, rows, out, inn):.3f} | "
                  f"{per_call_ms(rows_first, rows, out, inn):.3f} |", flush=True)


if __name__ == "__main__":
    main()
