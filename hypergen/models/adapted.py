"""Run the frozen main model with generated parameters: M(x; theta, phi), optionally with fusion-in-decoder.

How the main model reads the query and the answer is its family's (hypergen/models/families/): T5 encodes the
query and decodes the answer (fusion-in-decoder, appendix 6.1.3: the main decoder cross-attends to [e ; Enc_main(x)],
the hypernetwork encoder's output prepended to the main encoder's output); a causal LM reads [query ; answer].
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..components.base import PEFTTarget
from .families import family_of
from .backbones.base import Context
from .hypernet import TaskParameters


def fusion_context(per_example: TaskParameters | None, fusion: bool) -> Context | None:
    """The encoded demos the main model fuses in (``rows``: each example's task row), or None without fusion."""
    if not fusion or per_example is None:
        return None
    return Context(per_example.encoder_states, per_example.encoder_mask, rows=per_example.example_rows,
                   gate=per_example.fusion_gate)


def main_forward(main_model, input_ids, attention_mask, labels, fusion_states: Context | None = None):
    """The main model teacher-forced on ``labels`` (B x n_y, -100 = padding): ``.loss`` the mean CE over answer
    tokens, ``.logits`` B x n_y x V (row t predicts answer token t)."""
    return family_of(main_model).forward(main_model, fusion_states, input_ids, attention_mask, labels)


def main_generate(main_model, input_ids, attention_mask, max_new_tokens: int, num_beams: int = 1,
                  fusion_states: Context | None = None) -> torch.Tensor:
    """Greedy (or beam) decoding: B x n_out new token ids."""
    return family_of(main_model).generate(main_model, fusion_states, input_ids, attention_mask, max_new_tokens,
                                          num_beams)


def adapted_forward(main_model, target: PEFTTarget, per_example: TaskParameters, input_ids, attention_mask, labels,
                    fusion: bool):
    """The main model teacher-forced on ``labels`` (B x n_y) with each example's generated parameters applied
    (``per_example``: one row per example). ``.loss`` is eq. 5's L_pred = CE(M(x; theta, phi), y), averaged over
    target tokens; ``.logits`` is B x n_y x V."""
    with target.applied(main_model, per_example.params):
        return main_forward(main_model, input_ids, attention_mask, labels, fusion_context(per_example, fusion))


@torch.no_grad()
def adapted_generate(main_model, target: PEFTTarget, per_example: TaskParameters | None, input_ids,
                     attention_mask, fusion: bool, max_new_tokens: int, num_beams: int = 1) -> torch.Tensor:
    """Greedy (or beam) decoding with the generated parameters applied; returns B x n_out token ids."""
    params = per_example.params if per_example is not None else {}
    context = target.applied(main_model, params) if per_example is not None else nullcontext()
    with context:
        return main_generate(main_model, input_ids, attention_mask, max_new_tokens, num_beams,
                             fusion_context(per_example, fusion))
