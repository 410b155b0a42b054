"""Run the frozen main model with generated parameters: M(x; theta, phi), optionally with fusion-in-decoder.

Fusion-in-decoder (appendix 6.1.3): the main decoder cross-attends to [e ; Enc_main(x)], the hypernetwork
encoder's output prepended to the main encoder's output.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from ..components.base import PEFTTarget
from .hypernet import TaskParameters


def encode(main_model, per_example: TaskParameters | None, input_ids, attention_mask,
           fusion: bool) -> tuple[BaseModelOutput, torch.Tensor]:
    """Main encoder output B x (n_d +) n_x x d (with fusion, prefixed by the hypernetwork encoder's states) and its
    mask B x (n_d +) n_x."""
    states = main_model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask
    if fusion and per_example is not None:
        states = torch.cat([per_example.encoder_states.to(states.dtype), states], dim=1)
        mask = torch.cat([per_example.encoder_mask.to(mask.dtype), mask], dim=1)
    return BaseModelOutput(last_hidden_state=states), mask


def adapted_forward(main_model, target: PEFTTarget, per_example: TaskParameters, input_ids, attention_mask, labels,
                    fusion: bool) -> Seq2SeqLMOutput:
    """The main model teacher-forced on ``labels`` (B x n_y) with each example's generated parameters applied
    (``per_example``: one row per example). ``.loss`` is eq. 5's L_pred = CE(M(x; theta, phi), y), averaged over
    target tokens; ``.logits`` is B x n_y x V."""
    with target.applied(main_model, per_example.params):
        encoder_outputs, mask = encode(main_model, per_example, input_ids, attention_mask, fusion)
        return main_model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels)


@torch.no_grad()
def adapted_generate(main_model, target: PEFTTarget, per_example: TaskParameters | None, input_ids,
                     attention_mask, fusion: bool, max_new_tokens: int, num_beams: int = 1) -> torch.Tensor:
    """Greedy (or beam) decoding with the generated parameters applied; returns B x n_out token ids."""
    params = per_example.params if per_example is not None else {}
    context = target.applied(main_model, params) if per_example is not None else nullcontext()
    with context:
        encoder_outputs, mask = encode(main_model, per_example, input_ids, attention_mask, fusion)
        return main_model.generate(encoder_outputs=encoder_outputs, attention_mask=mask,
                                   max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)

