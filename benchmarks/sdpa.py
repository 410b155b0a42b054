"""Prefix attention: eager (T5's matmul-softmax-matmul) vs scaled_dot_product_attention, on this machine.

A random-weight T5 of the tiny and of T5-Large's widths (fewer layers: the kernels' cost per layer is what differs),
prefixes of the recipes' lengths on every self-attention layer, padded encoder input, the main model frozen as in
training. Times a forward pass without gradients (evaluation) and a forward + backward pass with gradients to the
prefixes (training) for each kernel, the kernels interleaved repeat by repeat, and reports the fastest of
``--repeats`` after one warm-up (the least disturbed by other processes on a shared machine). Writes the table to stdout (markdown) and, with ``--out``, to a
file.

    PYTHONPATH=. python benchmarks/sdpa.py --threads 2 --out benchmarks/results/throughput_sdpa.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from hypergen.components.targets.prefix import PrefixTarget

# name -> (T5 widths, layers per stack, prefix length, batch, encoder tokens, decoder tokens)
SHAPES = {
    "tiny": (dict(d_model=128, d_kv=32, d_ff=256, num_heads=4), 2, 8, 32, 96, 16),
    "t5-large": (dict(d_model=1024, d_kv=64, d_ff=2816, num_heads=16), 2, 32, 4, 320, 16),
}


def _model(widths: dict, layers: int) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=384, num_layers=layers, num_decoder_layers=layers, feed_forward_proj="gated-gelu",
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0, **widths)
    return T5ForConditionalGeneration(config).eval()


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, repeats: int) -> dict[str, float]:
    """Fastest seconds per forward and per forward+backward with each kernel, for shape ``name``."""
    widths, layers, length, batch, enc_len, dec_len = SHAPES[name]
    model = _model(widths, layers).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(2, 384, (batch, enc_len), generator=gen)
    mask = torch.ones_like(x)
    mask[batch // 2:, enc_len * 3 // 4:] = 0  # half the rows padded
    y = torch.randint(2, 384, (batch, dec_len), generator=gen)
    targets = {kernel: PrefixTarget(length=length, attention=kernel) for kernel in ("eager", "sdpa")}
    params = {g.name: torch.randn(batch, g.num_layers, g.rows, g.width, generator=gen).requires_grad_()
              for g in targets["eager"].slot_groups(model)}

    def forward(target):
        target.prepare(model)
        with torch.no_grad(), target.applied(model, params):
            model(input_ids=x, attention_mask=mask, decoder_input_ids=y)

    def train_step(target):
        target.prepare(model)
        with target.applied(model, params):
            model(input_ids=x, attention_mask=mask, labels=y).loss.backward()

    times: dict[str, list[float]] = {}
    for i in range(repeats + 1):  # the first round is the warm-up
        for kernel, target in targets.items():
            for part, fn in (("forward", forward), ("train", train_step)):
                elapsed = _seconds(lambda: fn(target))
                if i:
                    times.setdefault(f"{kernel}_{part}", []).append(elapsed)
    return {key: min(values) for key, values in times.items()}


def table(results: dict[str, dict[str, float]], threads: int) -> str:
    lines = [f"torch {torch.__version__}, {threads} threads, fastest of the repeats (ms); speedup = eager / sdpa", "",
             "| shape | batch x enc x dec, prefix | eager fwd | sdpa fwd | speedup | eager fwd+bwd | sdpa fwd+bwd "
             "| speedup |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        _, _, length, batch, enc_len, dec_len = SHAPES[name]
        lines.append(
            f"| {name} | {batch} x {enc_len} x {dec_len}, {length} | {1e3 * r['eager_forward']:.1f} | "
            f"{1e3 * r['sdpa_forward']:.1f} | {r['eager_forward'] / r['sdpa_forward']:.2f}x | "
            f"{1e3 * r['eager_train']:.1f} | {1e3 * r['sdpa_train']:.1f} | "
            f"{r['eager_train'] / r['sdpa_train']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
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
