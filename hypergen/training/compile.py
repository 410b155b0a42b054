"""``training.compile``: torch.compile each transformer block of the main model and of the hypernetwork.

Per block (``nn.Module.compile``, in place), not the whole model: a block is the same code at every depth, so one
compiled graph serves all the blocks of a stack and a change of shape (another sequence length, HART's growing KV
cache) recompiles one block's graph rather than the model's. Parameter names and the state dict are unchanged, so
checkpoints and exported adapters are the same with and without it. Measured, not assumed:
benchmarks/results/throughput_sdpa.md.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import HypergenError


def _blocks(module: nn.Module) -> list[nn.Module]:
    """Every element of every ``block`` ModuleList under ``module`` (T5 stacks keep their layers there)."""
    found = []
    for name, child in module.named_modules():
        if name.rsplit(".", 1)[-1] == "block" and isinstance(child, nn.ModuleList):
            found.extend(child)
    return found


def check_compile_works() -> None:
    """Compile and run a one-op function; a torch.compile that cannot work here (no C compiler for inductor on
    CPU, an unsupported Python) raises one line naming ``training.compile``."""
    try:
        torch._dynamo.reset()
        probe = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2)
        probe(torch.ones(4))
    except Exception as exc:  # noqa: BLE001 - whatever inductor raises, the user's fix is the same
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HypergenError(f"training.compile: torch.compile does not work on this machine ({type(exc).__name__}: "
                            f"{first_line[:200]}); set training.compile to false") from None


def compile_blocks(method) -> int:
    """Compile every block of ``method.main_model`` and of ``method.module`` (the hypernetwork; the same model when
    fine-tuning); return how many blocks were compiled."""
    check_compile_works()
    blocks = {id(b): b for part in (method.main_model, method.module) for b in _blocks(part)}
    for block in blocks.values():
        block.compile(dynamic=None)
    return len(blocks)
