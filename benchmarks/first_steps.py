"""The first optimizer steps of a hypernetwork recipe on a real model: per step, the training loss beside the frozen
main model's loss on the same batch, and the generated LoRA's size relative to the weight it adapts.

    python benchmarks/first_steps.py RECIPE STEPS [--set-style overrides: key.path=value ...]

e.g. ``python benchmarks/first_steps.py recipes/smollm2_hart_sni.json 12 hypernetwork.projector.output_lr_scale=1``
(the projector's output layer at the full learning rate, as before round 3). Prints one JSON line per step:
``loss`` (L_pred), ``frozen`` (the frozen model's CE on the same batch), ``dW/W`` (mean over every sixth adapted
projection of ||scale * B A||_F / ||W||_F for the batch's first task, after the step's forward), ``|A|`` (mean
absolute entry of the generated A), ``gnorm`` (the gradient norm before clipping) and ``s`` (seconds)."""
import json
import random
import sys
import time

import torch

from hypergen.data.sampling import TaskSampler
from hypergen.models.adapted import main_forward
from hypergen.recipe import load_recipe
from hypergen.runs.assembly import assemble
from hypergen.runs.tasks import training_and_validation
from hypergen.training.optim import linear_schedule, make_optimizer

recipe = load_recipe(sys.argv[1], sys.argv[3:])
steps = int(sys.argv[2])
random.seed(0)
torch.manual_seed(0)
assembled = assemble(recipe, torch.device("cpu"))
method = assembled.method
train_tasks, _ = training_and_validation(recipe)
sampler = TaskSampler(train_tasks, 0, recipe.data.queries_per_task, True)
optimizer = make_optimizer(method.module.parameters(), recipe.training)
schedule = linear_schedule(optimizer, recipe.training.warmup_steps, recipe.training.steps)
tasks_per_batch = recipe.training.batch_size // recipe.data.queries_per_task
sites = method.target.sites(method.main_model)
for step in range(steps):
    start = time.time()
    batch = assembled.collator(sampler.next_batch(tasks_per_batch)).to(assembled.device)
    method.train()
    loss, parts = method.loss(batch, step)
    with torch.no_grad():
        frozen = main_forward(method.main_model, batch.input_ids, batch.attention_mask, batch.labels).loss.item()
        params = method.module(batch.demo_ids, batch.demo_mask).params
        relative = []
        for site, linear in sites[::6]:
            a, bt = params[f"{site.group}.A"][0, site.layer], params[f"{site.group}.B"][0, site.layer]
            relative.append(((method.target.scale * bt.t() @ a).norm() / linear.weight.norm()).item())
        a_size = torch.cat([v.abs().flatten() for k, v in params.items() if k.endswith(".A")]).mean().item()
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(method.module.parameters(), recipe.training.max_grad_norm or 1e9).item()
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    for regularizer in method.regularizers:
        regularizer.end_step(True)
    print(json.dumps({"step": step, "loss": round(parts["loss"].item(), 3), "frozen": round(frozen, 3),
                      "dW/W": round(sum(relative) / len(relative), 4), "|A|": round(a_size, 4),
                      "gnorm": round(gnorm, 2), "s": round(time.time() - start, 1)}), flush=True)
