"""Depth scaling of a layer-by-layer generator: time per generation against main-model depth, with the KV cache
and with ``use_cache=False`` (recompute), and the log-log fitted exponent."""

from __future__ import annotations

from typing import Any

import torch

from ..models.backbones.base import MainModelShape
from ..components.build import make_component
from ..recipe import ComponentSpec
from ..training.methods import HypernetMethod
from .measure import fit_power_law, timed
from .setup import Setup


def depth_scaling(setup: Setup, method: HypernetMethod, generator: ComponentSpec, depths: tuple[int, ...],
                  repeats: int) -> dict[str, Any]:
    """Time of one generation by the registered ``generator`` (built twice, with ``use_cache`` true and false) for
    main models of ``depths`` layers (encoder = decoder = depth) at the main model's width, on ``method``'s
    hypernetwork backbone; random demo tokens (1 x n_d, n_d the longest demo), encoded once, stand in for the demos.
    The recompute path runs up to ``recompute_max_depth`` layers. Each time: the fastest of ``repeats`` runs after a
    warm-up run."""
    device = setup.device
    backbone = method.module.backbone
    d_model = method.module.d_model
    n_d = setup.collator.cfg.max_demo_length
    torch.manual_seed(0)
    ids = torch.randint(2, len(setup.tokenizer), (1, n_d), device=device)
    with torch.no_grad():
        context = backbone.encode(ids, torch.ones_like(ids))
    result: dict[str, Any] = {"depths": list(depths), "width": d_model, "hypernet_decoder_layers": backbone.num_layers,
                              "demo_tokens": n_d, "repeats": repeats}
    for name, use_cache in (("cached", True), ("recompute", False)):
        spec = ComponentSpec(name=generator.name, **{**generator.params, "use_cache": use_cache})
        built = make_component("generators", spec, f"bench depth scaling ({name})")
        built.build(d_model, backbone.shape, 1)
        built.to(device)
        times = []
        chosen = [d for d in depths if use_cache or d <= setup.preset.recompute_max_depth]
        for depth in chosen:
            shape = MainModelShape(tuple((name, depth) for name in backbone.shape.names))
            with torch.no_grad():
                run = lambda: built(backbone, context, shape)  # noqa: E731
                run()  # warm-up
                times.append(min(timed(run, device)[0] for _ in range(repeats)))
        result[name] = {"depths": chosen, "seconds": times,
                        "fit": fit_power_law(chosen, times) if len(chosen) >= 2 else None}
    return result
