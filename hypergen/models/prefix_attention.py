"""The attention function every prefix goes through (``"hypergen_prefix"``): a family's eager attention with extra
key/value rows prepended, each layer's rows read from attributes of its attention module.

Two sources of prepended rows, both without position (no relative bias in T5, no rotary embedding in a causal LM):

* ``_PREFIX``: a generated (or learned) prefix, (keys, values) each P x heads x p x d_kv, visible to every query;
  set by :class:`~hypergen.components.targets.prefix.PrefixTarget`;
* ``_FUSION``: a causal LM's analogue of fusion-in-decoder, (keys, values, keep, gate) with keep P x n_d (1 = demo
  token, 0 = padding): the hypernetwork's encoding of the demos read by the layer's own key/value projections
  (:meth:`hypergen.models.families.base.Family.fused`); padded demo columns are masked. With a gate (a 0-d
  tensor g), the layer's output gains tanh(g) x attention(query, fused keys, fused values) (a separate softmax);
  without (None), the fused keys are prepended and share the layer's softmax.

Both are expanded from P rows to the key batch B = P * beams with ``repeat_interleave`` (``generate()`` with beams),
never written to the KV cache. :func:`use_prefix_attention` switches a model to this function.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.utils.output_capturing import _active_collector

from .backbones.base import TEMPORARY_ATTRIBUTE_PREFIX, expand_to_batch

ATTN_IMPLEMENTATION = "hypergen_prefix"
_PREFIX = f"{TEMPORARY_ATTRIBUTE_PREFIX}prefix"  # (keys, values), each B x n_heads x p x d_kv, while applied
_FUSION = f"{TEMPORARY_ATTRIBUTE_PREFIX}fusion"  # (keys, values, keep): B x n_heads x n_d x d_kv and B x n_d
_ATTENTION = f"{TEMPORARY_ATTRIBUTE_PREFIX}prefix_attention"  # the family's eager attention, set by prepare
_KERNEL = f"{TEMPORARY_ATTRIBUTE_PREFIX}prefix_kernel"  # on a tagged attention module: "sdpa" or "eager"
ATTENTION_KERNELS = ("sdpa", "eager")
# the public names of the attributes a caller (a benchmark timing one attention call) sets on an attention module
PREFIX_ATTRIBUTE, FUSION_ATTRIBUTE, KERNEL_ATTRIBUTE = _PREFIX, _FUSION, _KERNEL

def _extend_mask(mask: torch.Tensor | None, p: int, dtype: torch.dtype, columns: torch.Tensor | None = None,
                 k_len: int = 0) -> torch.Tensor | None:
    """Prepend ``p`` columns to an additive (float) or boolean (True = attend) 4D mask.

    ``mask``: (B or 1) x (1 or H) x q_len x k_len, or None (every key visible). ``columns``: None (the ``p`` columns
    visible to every query) or B x p additive values (0 = visible, dtype min = masked, e.g. a demo's padding).
    Returns a float additive mask: ... x q_len x (p + k_len), or None when there is nothing to mask.
    """
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)
    if columns is None:
        return None if mask is None else nn.functional.pad(mask, (p, 0), value=0.0)
    if mask is None:
        mask = torch.zeros(1, 1, 1, k_len, dtype=dtype, device=columns.device)
    rows = max(mask.shape[0], columns.shape[0])
    columns = columns.to(mask.dtype)[:, None, None, :].expand(rows, mask.shape[1], mask.shape[2], p)
    return torch.cat([columns, mask.expand(rows, -1, -1, -1)], dim=-1)


def _prepended(module: nn.Module, batch: int, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """The rows prepended in ``module``: (keys, values: B x H x p x d_kv, additive columns B x p or None), the
    prefix's first, then the fused demos'; None when there are none."""
    keys, values, columns = [], [], []
    prefix = getattr(module, _PREFIX, None)
    if prefix is not None and prefix[0].shape[-2] > 0:
        prefix_key, prefix_value = expand_to_batch(batch, *prefix)
        keys.append(prefix_key), values.append(prefix_value), columns.append(None)
    fusion = getattr(module, _FUSION, None)
    if fusion is not None and fusion[3] is None:  # ungated: the demos' keys join the layer's own softmax
        fusion_key, fusion_value, keep = expand_to_batch(batch, *fusion[:3])
        keys.append(fusion_key), values.append(fusion_value)
        columns.append(torch.where(keep.bool(), 0.0, torch.finfo(dtype).min).to(dtype))
    if not keys:
        return None
    if all(c is None for c in columns):
        mask = None
    else:
        mask = torch.cat([torch.zeros(batch, k.shape[-2], dtype=dtype, device=k.device) if c is None else c
                          for k, c in zip(keys, columns)], dim=-1)
    return torch.cat(keys, dim=-2), torch.cat(values, dim=-2), mask


def _weights_requested(kwargs: dict[str, Any]) -> bool:
    """Whether the caller asked for attention weights (``output_attentions``: passed down, or being recorded)."""
    if kwargs.get("output_attentions"):
        return True
    collecting = _active_collector.get()
    return bool(collecting) and "attentions" in collecting


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, additive: torch.Tensor | None,
                   scaling: float, dropout: float) -> torch.Tensor:
    """``softmax(query @ key^T * scaling + additive) @ value`` by ``scaled_dot_product_attention``.

    ``query``: B x H x q_len x d_kv; ``key``/``value``: B x H x k_len x d_kv; ``additive``: float, broadcastable to
    B x H x q_len x k_len, or None. Returns B x q_len x H x d_kv (contiguous), as T5's eager attention does.
    """
    if additive is not None:
        additive = additive.to(query.dtype)
    output = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=additive, dropout_p=dropout,
                                                        scale=scaling)
    return output.transpose(1, 2).contiguous()


def prefix_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The family's eager attention, with the module's prefix (if any) prepended to ``key``/``value``, plus, with a
    gated fusion on the module, tanh(g) times the queries' attention over the fused demos alone
    (:func:`_gated_fusion`).

    ``query``: B x H x q_len x d_kv; ``key``/``value``: B x H x k_len x d_kv (from the cache in the decoder);
    ``position_bias``: (1 or B) x H x q_len x k_len; ``attention_mask``: additive float or boolean
    (B x 1 x q_len x k_len) or None. The prefix (P x H x p x d_kv, P dividing B) is expanded with
    ``repeat_interleave`` to B rows; its columns get zero bias and a zero mask (the fused demos' padding: masked).
    Returns
    ``(B x q_len x H x d_kv contiguous output, B x H x q_len x (p + k_len) attention weights, or None on the
    SDPA path)``.
    """
    prepended = _prepended(module, key.shape[0], query.dtype)
    has_prefix = prepended is not None
    if has_prefix:
        prefix_key, prefix_value, columns = prepended
        p, k_len = prefix_key.shape[-2], key.shape[-2]
        key = torch.cat([prefix_key.to(key.dtype), key], dim=-2)
        value = torch.cat([prefix_value.to(value.dtype), value], dim=-2)
        if position_bias is not None:
            position_bias = nn.functional.pad(position_bias, (p, 0), value=0.0)
        attention_mask = _extend_mask(attention_mask, p, query.dtype, columns, k_len)
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = _extend_mask(attention_mask, 0, query.dtype)
    if (has_prefix and getattr(module, _KERNEL, "eager") == "sdpa" and key.shape[1] == query.shape[1]
            and kwargs.get("softcap") is None and not _weights_requested(kwargs)):  # soft-capped scores: eager  # one SDPA call with one additive mask (bias + mask, 0 on prefix)
        additive = position_bias if attention_mask is None else (
            attention_mask if position_bias is None else position_bias + attention_mask)
        scale = query.size(-1) ** -0.5 if scaling is None else scaling
        output, weights = sdpa_attention(query, key, value, additive, scale, dropout), None
    else:
        if position_bias is not None:  # T5's relative bias; a causal LM's attention takes none
            kwargs["position_bias"] = position_bias
        output, weights = getattr(module, _ATTENTION)(module, query, key, value, attention_mask, scaling=scaling,
                                                      dropout=dropout, **kwargs)
    fused = _gated_fusion(module, query, scaling, dropout)
    return (output, weights) if fused is None else (output + fused.to(output.dtype), weights)


def _gated_fusion(module: nn.Module, query: torch.Tensor, scaling: float | None, dropout: float
                  ) -> torch.Tensor | None:
    """With a gated fusion on ``module``: ``tanh(g) softmax(q K_f^T * scaling + mask_f) V_f``, B x q_len x H x d_kv
    (grouped-query heads repeated; padding masked; zero for an example with no demo token); else None."""
    fusion = getattr(module, _FUSION, None)
    if fusion is None or fusion[3] is None:
        return None
    keys, values, keep = expand_to_batch(query.shape[0], *fusion[:3])
    repeat = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(repeat, dim=1), values.repeat_interleave(repeat, dim=1)
    additive = torch.where(keep.bool(), 0.0, torch.finfo(query.dtype).min).to(query.dtype)[:, None, None, :]
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    fused = sdpa_attention(query, keys.to(query.dtype), values.to(query.dtype), additive, scale, dropout)
    # an example with no demo token at all (the "none" demos control) fuses nothing, not its padding's average
    fused = fused * keep.any(-1).to(fused.dtype)[:, None, None, None]
    return torch.tanh(fusion[3]).to(fused.dtype) * fused


_registered = False


def _register_attention() -> None:
    """Register the attention and mask functions under ``"hypergen_prefix"`` (once per process)."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTN_IMPLEMENTATION, prefix_attention_forward)
        # Without a mask function registered under the same name, transformers builds NO mask at all
        # (padding and causality would be lost). The eager mask is float additive (0 / dtype min), never
        # skipped for causal masks, and None only for unpadded bidirectional input.
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
        _registered = True


def use_prefix_attention(main_model: nn.Module, attention_modules: Sequence[nn.Module],
                         attention: Callable[..., Any]) -> None:
    """Switch every (sub)config of ``main_model`` to ``"hypergen_prefix"``; ``attention`` (the family's eager
    attention) runs inside it in each of ``attention_modules``. Idempotent."""
    _register_attention()
    if main_model.config._attn_implementation != ATTN_IMPLEMENTATION:
        main_model.set_attn_implementation(ATTN_IMPLEMENTATION)  # also reaches the encoder/decoder configs
    for module in attention_modules:  # cross-attention too: it runs the function
        setattr(module, _ATTENTION, attention)
