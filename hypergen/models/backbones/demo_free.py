"""The backbone of a generator that reads no demos (plain multi-task Prefix-Tuning / LoRA as recipes).

It holds no layers of its own: ``modules`` is empty, so the hypernetwork trains only the generator's learned states
and the projector (the PEFT parameters and their reparameterization). ``encode`` runs nothing and returns an empty
context (T x 0 x d_h states), which is all such a generator needs: how many tasks to lay its states out for.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import RecipeError
from .base import Backbone, Context, MainModelShape


class DemoFreeBackbone(Backbone):
    """``shape`` and ``d_model`` (the main model's hidden width) of ``main_model``; no layers, no fusion."""

    supports_fusion = False  # there are no encoded demos to fuse into the main model
    num_layers = 0

    def __init__(self, main_model: nn.Module, shape: MainModelShape) -> None:
        config = main_model.config
        self.shape = shape
        self.d_model = getattr(config, "d_model", None) or config.hidden_size  # T5's d_model, a causal LM's hidden
        self.modules = {}

    def encode(self, demo_ids: torch.Tensor, demo_mask: torch.Tensor) -> Context:
        """T x 0 x d_h states and a T x 0 mask: the demos are not read."""
        num_tasks = demo_ids.shape[0]
        return Context(torch.zeros(num_tasks, 0, self.d_model, device=demo_ids.device),
                       demo_mask.new_zeros(num_tasks, 0))

    def new_cache(self, context: Context) -> None:
        raise RecipeError("hypernetwork.generator: this generator reads no demos; it has no decoder to cache")

    def decode(self, inputs, context, cache=None, self_mask=None, output_attentions=False, checkpoint=False):
        raise RecipeError("hypernetwork.generator: this generator reads no demos; it has no decoder to run")
