"""The README model card of a saved hypernetwork: what it is (method, main model, PEFT target), how to use it, its
held-out scores and the demos control, and the recipe it was trained with.

``evaluation`` (as in ``hypergen_config.json``)::

    {"held_out": {"exact_match": 41.2, "rougeL": 55.0, "instances": 320},       # RUN/eval/scores.json's overall
     "other_demos": {...} or None,     # RUN/eval-control-other/ (the control; a run evaluated before: eval-other-demos/)
     "control_gap": {"rougeL": 12.3, ...} or None}                              # held_out - other_demos, per metric
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..recipe.builtin import method_label, main_model_label
from ..data.controls import LEGACY_OTHER_DEMOS_DIR, control_dir

METRICS = ("exact_match", "rougeL", "accuracy")


def evaluation_of_run(run_dir: Path) -> dict[str, Any] | None:
    """The held-out scores of a run (``eval/``), the demos control (``eval-control-other/``, or the
    ``eval-other-demos/`` of a run evaluated before the controls had names) and their gap."""
    def overall(name: str) -> dict[str, Any] | None:
        file = Path(run_dir) / name / "scores.json"
        return json.loads(file.read_text()).get("overall") if file.is_file() else None

    held_out = overall("eval")
    other = overall(control_dir("other")) or overall(LEGACY_OTHER_DEMOS_DIR)
    if held_out is None:
        return None
    gap = None
    if other is not None:
        gap = {m: round(held_out[m] - other[m], 4) for m in METRICS if m in held_out and m in other}
    return {"held_out": held_out, "other_demos": other, "control_gap": gap}


def _scores_table(evaluation: dict[str, Any] | None) -> str:
    if not evaluation:
        return ("Not evaluated: the run was saved before `hypergen eval` wrote its held-out scores.\n")
    held, other, gap = evaluation["held_out"], evaluation.get("other_demos"), evaluation.get("control_gap") or {}
    lines = ["| metric | own demos | another task's demos (control) | gap |", "|---|---|---|---|"]
    for metric in METRICS:
        if metric in held:
            control = f"{other[metric]:.2f}" if other and metric in other else "not run"
            diff = f"{gap[metric]:+.2f}" if metric in gap else ""
            lines.append(f"| {metric} | {held[metric]:.2f} | {control} | {diff} |")
    note = ("\nThe control gives every held-out task another task's demos (`hypergen eval --control other`): a "
            "hypernetwork that adapts to the demos scores lower there, so the gap measures how much it uses them.\n")
    if other is None:
        note = "\nThe demos control was not run (`hypergen eval --run RUN --control other`).\n"
    instances = f"\nHeld-out instances: {held.get('instances')}.\n" if "instances" in held else ""
    return "\n".join(lines) + "\n" + instances + note


def model_card(recipe: dict[str, Any], name: str, main_model: str, evaluation: dict[str, Any] | None,
               hub_main_model: bool) -> str:
    """The README.md text. ``main_model``: its hub id, or where the copy lives in the folder."""
    method = method_label(recipe)
    peft = recipe.get("peft", {}).get("name", "prefix")
    tags = ["hypergen", "hypernetwork", "peft", peft, method.split(" ")[0].lower()]
    header = ["---", "library_name: hypergen", "tags:"] + [f"- {t}" for t in dict.fromkeys(tags)]
    if hub_main_model:
        header.append(f"base_model: {main_model}")
    header.append("---")
    source = (f"the main model `{main_model}` (from the Hugging Face Hub)" if hub_main_model
              else f"a copy of its main model in `{main_model}/` ({main_model_label(recipe)})")
    description = recipe.get("description") or ""
    return "\n".join(header) + f"""

# {name}

A hypergen hypernetwork: **{method}**. Given a few demonstrations of a task it generates
PEFT parameters ({peft}) for a frozen language model in one forward pass, instead of a fine-tuning run. This folder
holds the hypernetwork's weights (`hypernetwork.safetensors`), `hypergen_config.json`, the resolved training
recipe (`recipe.json`), the tokenizer, and {source}.

{description}

## Use

```python
import hypergen

hn = hypergen.HyperNetwork.from_pretrained("{name}")
adapter = hn.adapt([{{"input": "...", "output": "..."}}, {{"input": "...", "output": "..."}}])
print(adapter.generate(["a new query"]))
adapter.save_pretrained("adapters/my-task")      # the folder `hypergen adapt` writes
```

## Held-out scores

{_scores_table(evaluation)}
## Recipe

```json
{json.dumps(recipe, indent=2)}
```
"""
