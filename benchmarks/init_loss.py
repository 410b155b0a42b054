"""What a fresh (untrained) hypernetwork does to the frozen main model: the mean CE of the adapted model against the
frozen model's on the same training batches.

    python benchmarks/init_loss.py RECIPE [key.path=value ...]      (BATCHES=4 in the environment by default)

e.g. ``python benchmarks/init_loss.py recipes/smollm2_hart_sni.json 'peft={"name": "prefix", "length": 8}'``.
Prints one JSON line: ``frozen``, ``adapted_at_init`` and the per-batch pairs. For LoRA both are equal (B is
generated as zero); for a prefix they are not (benchmarks/results/real_model.md)."""
import json
import os
import random
import sys

import torch

from hypergen.data.sampling import TaskSampler
from hypergen.models.adapted import main_forward
from hypergen.recipe import load_recipe
from hypergen.runs.assembly import assemble
from hypergen.runs.tasks import training_and_validation

recipe = load_recipe(sys.argv[1], sys.argv[2:])
random.seed(0)
torch.manual_seed(0)
assembled = assemble(recipe, torch.device("cpu"))
method = assembled.method
method.module.eval()
train_tasks, _ = training_and_validation(recipe)
sampler = TaskSampler(train_tasks, 0, recipe.data.queries_per_task, True)
pairs = []
with torch.no_grad():
    for _ in range(int(os.environ.get("BATCHES", 4))):
        batch = assembled.collator(sampler.next_batch(recipe.training.batch_size // recipe.data.queries_per_task))
        frozen = main_forward(method.main_model, batch.input_ids, batch.attention_mask, batch.labels).loss.item()
        pairs.append((frozen, method.loss(batch, 0)[1]["loss"].item()))
print(json.dumps({"frozen": sum(p[0] for p in pairs) / len(pairs),
                  "adapted_at_init": sum(p[1] for p in pairs) / len(pairs), "per_batch": pairs}))
