"""The frozen main model alone (no generated parameters) on the held-out tasks of a run, scored as `hypergen eval`
scores the run: `python benchmarks/frozen_baseline.py RUN_DIR` prints the overall scores (JSON)."""
import json
import sys

import torch

from hypergen.evaluation.evaluate import evaluate
from hypergen.runs.folder import load_final
from hypergen.runs.tasks import load_tasks
from hypergen.training.methods import FinetuneMethod

run = sys.argv[1]
assembled = load_final(run)
recipe = assembled.recipe
frozen = FinetuneMethod(assembled.method.main_model, few_shot=False, eval_cfg=recipe.evaluation)
frozen.eval()
tasks = load_tasks(recipe, "test", tokenizer=assembled.tokenizer)
with torch.no_grad():
    scores, _ = evaluate(frozen, tasks, assembled.collator, assembled.device, recipe.data.eval_instances_per_task,
                         recipe.evaluation.batch_size, progress=False)
print(json.dumps(scores["overall"]))
