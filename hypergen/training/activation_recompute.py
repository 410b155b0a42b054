"""Activation recomputation (``training.gradient_checkpointing``, "gradient checkpointing"; not the saved training
state, which is :mod:`.checkpoint`): recompute block activations in the backward pass instead of storing them.

* Hypernetwork encoder: Hugging Face's own ``gradient_checkpointing_enable`` on its T5 stack (non-reentrant).
* Hypernetwork decoder: the hypernetwork's ``checkpoint_decoder`` flag, passed through its generator to
  :func:`hypergen.components.generators.run_decoder`, which checkpoints each block call that has no KV cache.
  HART's cached steps are run as they are: the cache is appended to in place by every block call, so recomputing a
  block in the backward pass would append a second time (and change what later steps attend to); only its encoder
  is checkpointed.
* Frozen main model: it runs in eval mode (Hugging Face checkpoints only in training mode), and the generated
  parameters reach its attention through module attributes set for the duration of ``target.applied`` (gone when
  the backward pass recomputes). So each T5 block's ``forward`` is wrapped here: the wrapper snapshots the block's
  ``_hypergen_*`` attributes at call time and restores them around the recomputation. Its self-attention cache is
  dropped (a training forward does not need it; it would otherwise be written twice); a filled cross-attention cache
  (the fused demos' keys and values) is kept: it is only read.

Losses and gradients are the same with and without checkpointing (tests/training/test_distributed.py checks 1e-5).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from ..components.base import TEMPORARY_ATTRIBUTE_PREFIX
from ..models.families import family_of

_WRAPPED = f"{TEMPORARY_ATTRIBUTE_PREFIX}checkpoint_wrapped"


def enable_gradient_checkpointing(method, hypernetwork: bool, main_model: bool) -> list[str]:
    """Switch checkpointing on for the parts asked; return the parts switched on (for logging)."""
    done = []
    module = method.module
    if hypernetwork and hasattr(module, "backbone") and module is not method.main_model:
        if hasattr(module, "encoder"):  # T5's hypernetwork encoder (a causal LM's demos run through decode's layers)
            module.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module.checkpoint_decoder = True
        done.append("hypernetwork")
    if main_model:
        if module is method.main_model:  # fine-tuning: the trainable model itself, in training mode
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            module.config.use_cache = False
        else:
            for block in family_of(method.main_model).layers(method.main_model):
                wrap_block(block)
        done.append("main_model")
    return done


def wrap_block(block: nn.Module) -> None:
    """Make ``block(...)`` run under a non-reentrant checkpoint whenever gradients are being recorded."""
    if getattr(block, _WRAPPED, False):
        return
    forward = block.forward

    @functools.wraps(forward)
    def checkpointed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        caches = {k: kwargs.pop(k) for k in ("cache", "past_key_values") if k in kwargs}
        kwargs.pop("use_cache", None)
        snapshot = _hypergen_attributes(block)

        def run(*inner):
            current = _hypergen_attributes(block)
            _restore(snapshot)
            try:  # each run (the forward, then the recomputation) gets its own empty self-attention cache
                return forward(*inner, **kwargs, **{k: _read_only_part(v) for k, v in caches.items()})
            finally:
                _restore(current)

        return checkpoint(run, *args, use_reentrant=False)

    block.forward = checkpointed
    setattr(block, _WRAPPED, True)


def _read_only_part(cache: Any) -> Any:
    """What a recomputed block may be given of a cache: a cross-attention cache already filled (the fused demos'
    keys and values, :func:`hypergen.models.backbones.t5.fused_cross_attention`: read, never written), with an
    empty self-attention cache of its own; None for anything a block call would write to."""
    if isinstance(cache, EncoderDecoderCache) and cache.is_updated and all(cache.is_updated.values()):
        fresh = EncoderDecoderCache(DynamicCache(), cache.cross_attention_cache)
        fresh.is_updated = dict(cache.is_updated)
        return fresh
    return None


def _hypergen_attributes(block: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    return [(m, name, value) for m in block.modules() for name, value in vars(m).items()
            if name.startswith(TEMPORARY_ATTRIBUTE_PREFIX) and name not in (_WRAPPED,)]


def _restore(snapshot: list[tuple[nn.Module, str, Any]]) -> None:
    for module, name, value in snapshot:
        setattr(module, name, value)
