"""Depth scaling of a layer-by-layer generator: time per generation against main-model depth, with the KV cache
and with ``use_cache=False`` (recompute), and the log-log fitted exponent."""

from __future__ import annotations

from typing import Any

import torch

from ..components.base import MainModelShape
from ..components.build import make_component
from ..recipe import ComponentSpec
from ..training.methods import HypernetMethod
from .measure import fit_power_law, timed
from .setup import Setup


def depth_scaling(setup: Setup, method: HypernetMethod, generator: ComponentSpec, depths: tuple[int, ...],
                  repeats: int) -> dict[str, Any]:
    """Time of one generation by the registered ``generator`` (built twice, with ``use_cache`` true and false) for
    main models of ``depths`` layers (encoder = decoder = depth) at the main model's width, on ``method``'s
    hypernetwork decoder; random states (1 x n_d x d_model, n_d the longest demo) stand in for the encoder output.
    The recompute path runs up to ``recompute_max_depth`` layers. Each time: the fastest of ``repeats`` runs after a
    warm-up run."""
    device = setup.device
    decoder = method.module.decoder
    d_model = method.module.d_model
    n_d = setup.collator.cfg.max_demo_length
    torch.manual_seed(0)
    states = torch.randn(1, n_d, d_model, device=device)
    mask = torch.ones(1, n_d, dtype=torch.long, device=device)
    result: dict[str, Any] = {"depths": list(depths), "width": d_model, "hypernet_decoder_layers": len(decoder.block),
                              "demo_tokens": n_d, "repeats": repeats}
    for name, use_cache in (("cached", True), ("recompute", False)):
        spec = ComponentSpec(name=generator.name, **{**generator.params, "use_cache": use_cache})
        built = make_component("generators", spec, f"bench depth scaling ({name})")
        built.build(d_model, MainModelShape(1, 1), 1)
        built.to(device)
        times = []
        chosen = [d for d in depths if use_cache or d <= setup.preset.recompute_max_depth]
        for depth in chosen:
            shape = MainModelShape(depth, depth)
            with torch.no_grad():
                run = lambda: built(decoder, states, mask, shape)  # noqa: E731
                run()  # warm-up
                times.append(min(timed(run, device)[0] for _ in range(repeats)))
        result[name] = {"depths": chosen, "seconds": times,
                        "fit": fit_power_law(chosen, times) if len(chosen) >= 2 else None}
    return result
