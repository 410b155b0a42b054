"""Run the reproduction study: every method on every data source and seed, each run a normal run folder.

Layout under ``OUT/<scale>-<profile>/``: ``<data>/main`` (M0), ``<data>/<method>-s<seed>`` (a run folder per
method and seed: recipe.json, metrics.jsonl, eval/, and for the demos controls eval-control-<name>/;
``<data>/pretrain-s<seed>`` the seed's pre-trained hypernetwork that HyperTuning-PT starts from (a pretrain run);
with an alpha grid, the swept run (per data source the first method with local consistency at seed 0, or with
``alpha_select="run"`` every such method and seed) is a sweep folder instead: ``alpha=<a>/`` run folders, sweep.md,
sweep.json, the chosen run tested), ``<data>/recipes/`` (the recipe files trained) and ``results.json`` (every
score so far, rewritten atomically after each run). A study that was stopped continues where it stopped when started
again with the same settings: finished runs are read back, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import HypergenError
from ..io import atomic_write_json, atomic_write_text
from ..recipe import parse_recipe
from ..runs.devices import resolve_device
from .plan import CONTROL, CONTROL_KEYS, METHODS, Method, StudyConfig, alpha_grid_entry, data_label, \
    main_recipe, method_recipe, max_new_tokens, pretrain_recipe, pretrain_run_dir, SCALES


class Study:
    def __init__(self, cfg: StudyConfig, log: Callable[[str], None] = print, fresh: bool = False) -> None:
        self.cfg = cfg
        self.log = log
        self.fresh = fresh
        self.root = Path(cfg.out) / cfg.name
        self.results_path = self.root / "results.json"
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {"config": self._config_record(), "runs": {}, "skipped": []}
        if self.results_path.is_file() and not fresh:  # a stopped study goes on: keep what its runs recorded
            before = json.loads(self.results_path.read_text())
            if before.get("config") == self.results["config"]:
                self.results["runs"] = before.get("runs", {})
                self.results["wall_s_before"] = before.get("wall_s", 0.0)
                if "alpha_chosen" in before:
                    self.results["alpha_chosen"] = before["alpha_chosen"]

    def _config_record(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"name": cfg.name, "scale": cfg.scale, "profile": cfg.profile, "seeds": cfg.seeds,
                "data": [list(d) for d in cfg.data], "methods": cfg.methods, "device": cfg.device,
                "command": cfg.command, **({"controls": cfg.controls} if cfg.controls is not None else {}),
                "steps": {data_label(*d): cfg.steps_for(d[0]).__dict__ for d in cfg.data},
                "scale_settings": asdict(SCALES[cfg.scale]),
                **({"alpha": cfg.alpha} if cfg.alpha is not None else {}),
                **({"alpha_grid": list(cfg.alpha_grid), "alpha_select": cfg.alpha_select} if cfg.alpha_grid else {})}

    # -------------------------------------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        import torch

        self.results["device"] = _device_name(self.cfg.device, torch)
        scale = SCALES[self.cfg.scale]
        for source, path in self.cfg.data:
            label = data_label(source, path)
            folder = self.root / label
            if scale.main_model:  # a real pretrained main model: nothing to train first
                main_dir = folder / "main"
            elif self._expired(label, "main", 0):
                continue
            else:
                main_dir = self._trained(label, "main", 0, main_recipe(self.cfg, source, path), folder / "main")
            for seed in range(self.cfg.seeds):
                for key in self.cfg.methods:
                    method = METHODS[key]
                    if method.kind == "frozen" and seed > 0:  # deterministic: one evaluation
                        continue
                    if self._expired(label, key, seed):
                        continue
                    if method.kind == "frozen":
                        self._frozen(label, method, source, path, folder, main_dir / "model")
                        continue
                    if method.kind == "per_task":
                        self._per_task(label, method, seed, source, path, folder, main_dir / "model")
                        continue
                    if method.pretrained:  # the seed's pre-training (once: read back after), where the recipe reads it
                        self._trained(label, "pretrain", seed, pretrain_recipe(self.cfg, source, path,
                                      main_dir / "model", seed), pretrain_run_dir(main_dir / "model", seed))
                    alpha = self._chosen_alpha(label, key, seed) if method.consistency else None
                    recipe = method_recipe(self.cfg, method, source, path, main_dir / "model", seed, alpha=alpha)
                    if method.consistency and self.cfg.alpha_grid and alpha is None:
                        run_dir = self._swept(label, key, seed, recipe, folder / f"{key}-s{seed}")
                        if self.cfg.alpha_select == "data":  # this data source's alpha, for every later run
                            self.results.setdefault("alpha_chosen", {})[label] = {
                                "alpha": self._entry(label, key, seed)["alpha"], "method": key, "seed": seed}
                            self._save()
                    else:
                        if alpha is not None:
                            self._entry(label, key, seed)["alpha"] = alpha
                        run_dir = self._trained(label, key, seed, recipe, folder / f"{key}-s{seed}")
                    controlled = CONTROL if self.cfg.controls is None else self.cfg.controls
                    if key in controlled and (scale.control_seeds is None or seed < scale.control_seeds):
                        self._control(label, key, seed, run_dir)
        self._save()
        return self.results

    def _chosen_alpha(self, label: str, key: str, seed: int) -> float | None:
        """The alpha data source ``label``'s sweep chose, for the run (key, seed); None where there is none yet, the
        run is that sweep itself (read back when the study continues), or alpha is swept per run."""
        chosen = self.results.get("alpha_chosen", {}).get(label)
        if not self.cfg.alpha_grid or self.cfg.alpha_select != "data" or chosen is None \
                or (chosen["method"], chosen["seed"]) == (key, seed):
            return None
        return chosen["alpha"]

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _expired(self, label: str, key: str, seed: int) -> bool:
        if self.cfg.deadline_s is None or self.elapsed < self.cfg.deadline_s:
            return False
        self.results["skipped"].append({"data": label, "method": key, "seed": seed,
                                        "why": f"deadline of {self.cfg.deadline_s:.0f} s reached"})
        self.log(f"  skipped {label} {key} s{seed}: deadline reached")
        self._save()
        return True

    def _entry(self, label: str, key: str, seed: int) -> dict[str, Any]:
        return self.results["runs"].setdefault(label, {}).setdefault(key, {}).setdefault(str(seed), {})

    def _save(self) -> None:
        self.results["wall_s"] = self.results.get("wall_s_before", 0.0) + self.elapsed  # this study, all sittings
        atomic_write_json(self.results_path, self.results)

    # ------------------------------------------------------------------------------------- one trained run
    def _trained(self, label: str, key: str, seed: int, recipe: dict[str, Any], run_dir: Path) -> Path:
        """Train and evaluate ``recipe`` into ``run_dir`` (or read it back when it finished before); a pretrain
        recipe is trained only (its record: what its pre-training read)."""
        from ..runs.train import train

        recipe_file = run_dir.parent / "recipes" / f"{run_dir.name}.json"
        resolved = json.loads(parse_recipe(recipe, str(recipe_file)).model_dump_json())
        pretrain = recipe.get("kind") == "pretrain"
        scores_file = run_dir / ("pretrain_data.json" if pretrain else "eval/scores.json")
        stored = run_dir / "recipe.json"
        same = stored.is_file() and json.loads(stored.read_text()) == resolved
        if stored.is_file() and not same and not self.fresh:
            raise HypergenError(f"{run_dir}: holds a run of other settings than this study's; pass --fresh to "
                                f"retrain it, or choose another --out")
        entry = self._entry(label, key, seed)
        if same and scores_file.is_file():
            self.log(f"{label} {key} s{seed}: finished before, read back from {run_dir}")
        else:
            atomic_write_text(recipe_file, json.dumps(recipe, indent=2) + "\n")
            steps = recipe["training"]["steps"]
            self.log(f"{label} {key} s{seed}: training {steps} steps -> {run_dir}")
            started = time.perf_counter()
            train(str(recipe_file), str(run_dir), [], resume=same, overwrite=not same, progress=False)
            entry["wall_s"] = time.perf_counter() - started
        entry["run"] = str(run_dir)
        if pretrain:
            entry["pretrain_data"] = json.loads(scores_file.read_text())
            self._save()
            return run_dir
        entry["overall"] = json.loads(scores_file.read_text())["overall"]
        self.log(f"  {_scores_line(entry['overall'])}" + (f" ({entry['wall_s']:.0f} s)" if "wall_s" in entry else ""))
        self._save()
        return run_dir

    def _swept(self, label: str, key: str, seed: int, recipe: dict[str, Any], folder: Path) -> Path:
        """``hypergen sweep`` of alpha over ``cfg.alpha_grid`` into ``folder`` (a run per alpha, chosen on the
        validation split, only the chosen run tested); returns the chosen run."""
        from ..runs.sweep import plan_sweep, run_sweep

        recipe_file = folder.parent / "recipes" / f"{folder.name}.json"
        atomic_write_text(recipe_file, json.dumps(recipe, indent=2) + "\n")
        plan = plan_sweep(str(recipe_file), [alpha_grid_entry(self.cfg.alpha_grid)], folder, [])
        self.log(f"{label} {key} s{seed}: sweeping alpha over {', '.join(f'{a:g}' for a in self.cfg.alpha_grid)} "
                 f"-> {folder}")
        started = time.perf_counter()
        result = run_sweep(plan, resume=True, overwrite=self.fresh, progress=False,
                           log=lambda message: self.log(f"  {message}"))
        entry = self._entry(label, key, seed)
        entry["wall_s"] = entry.get("wall_s", 0.0) + time.perf_counter() - started
        entry["run"], entry["overall"] = result["chosen_run"], result["test"]
        entry["alpha"] = float(next(iter(result["chosen_values"].values())))
        swept = next(iter(result["grid"]))
        entry["alpha_sweep"] = {row["values"][swept]: row["validation"] for row in result["runs"]}
        self.log(f"  chosen alpha {entry['alpha']:g}; test {_scores_line(entry['overall'])}")
        self._save()
        return Path(result["chosen_run"])

    def _control(self, label: str, key: str, seed: int, run_dir: Path) -> None:
        """The demos controls: the same run evaluated with every held-out task given another task's demos, random
        tokens of the same length, and no demos (``hypergen eval --control``)."""
        from ..data.controls import control_dir
        from ..runs.evaluate import evaluate_run

        own_scores = run_dir / "eval" / "scores.json"
        entry = self._entry(label, key, seed)
        for control, result_key in CONTROL_KEYS.items():
            scores_file = run_dir / control_dir(control) / "scores.json"
            if not scores_file.is_file() or scores_file.stat().st_mtime < own_scores.stat().st_mtime:  # stale: redo
                evaluate_run(str(run_dir), progress=False, control=control,
                             device=resolve_device(self.cfg.device, "--device"))
            entry[result_key] = json.loads(scores_file.read_text())["overall"]
            self.log(f"  control {control}: {_scores_line(entry[result_key])}")
        self._save()

    def _frozen(self, label: str, method: Method, source: str, path: str | None, folder: Path,
                model_dir: Path) -> None:
        """The frozen main model alone in ``method.frozen``'s prompt (``hypergen eval --frozen``), on the same
        held-out instances as every other row; deterministic, so under seed 0 only."""
        from ..evaluation.frozen import FROZEN_MARKER, evaluate_frozen

        run_dir = folder / f"{method.key}-s0"
        recipe = method_recipe(self.cfg, method, source, path, model_dir, 0)
        recipe_file = folder / "recipes" / f"{run_dir.name}.json"
        resolved = json.loads(parse_recipe(recipe, str(recipe_file)).model_dump_json())
        scores_file, stored = run_dir / "eval" / "scores.json", run_dir / "recipe.json"
        entry = self._entry(label, method.key, 0)
        same = stored.is_file() and json.loads(stored.read_text()) == resolved and (run_dir / FROZEN_MARKER).is_file()
        if same and scores_file.is_file():
            self.log(f"{label} {method.key}: finished before, read back from {run_dir}")
        else:
            if run_dir.exists() and not self.fresh and not same:
                raise HypergenError(f"{run_dir}: holds a run of other settings than this study's; pass --fresh to "
                                    f"redo it, or choose another --out")
            atomic_write_text(recipe_file, json.dumps(recipe, indent=2) + "\n")
            self.log(f"{label} {method.key}: the frozen main model, {method.frozen} -> {run_dir}")
            started = time.perf_counter()
            evaluate_frozen(parse_recipe(recipe, str(recipe_file)), method.frozen, run_dir,
                            {"recipe": str(recipe_file)}, progress=False,
                            device=resolve_device(self.cfg.device, "--device"))
            entry["wall_s"] = time.perf_counter() - started
        entry["run"] = str(run_dir)
        entry["overall"] = json.loads(scores_file.read_text())["overall"]
        self.log(f"  {_scores_line(entry['overall'])}" + (f" ({entry['wall_s']:.0f} s)" if "wall_s" in entry else ""))
        self._save()

    # --------------------------------------------------------------------------- per-task backprop baselines
    def _per_task(self, label: str, method: Method, seed: int, source: str, path: str | None, folder: Path,
                  model_dir: Path) -> None:
        """Prefix-Tuning / LoRA: fresh parameters per held-out task, trained on its demos, on M0 or the scale's real
        main model (frozen)."""
        from ..baselines import tune_and_predict
        from ..evaluation.metrics import score_predictions
        from ..models.main import freeze
        from ..runs.assembly import assemble
        from ..runs.folder import load_final
        from ..runs.tasks import load_tasks

        run_dir = folder / f"{method.key}-s{seed}"
        scale, steps = SCALES[self.cfg.scale], self.cfg.steps_for(source)
        settings = {"kind": "per_task", "peft": method.peft, "steps": steps.per_task, "seed": seed,
                    "lr": scale.per_task_lr[method.peft], "prefix_length": scale.prefix_length,
                    "lora_rank": scale.lora["rank"], "main_model": scale.main_model or str(model_dir),
                    "eval_instances": steps.eval_instances}
        scores_file = run_dir / "eval" / "scores.json"
        settings_file = run_dir / "per_task.json"
        entry = self._entry(label, method.key, seed)
        if scores_file.is_file() and settings_file.is_file() and json.loads(settings_file.read_text()) == settings:
            self.log(f"{label} {method.key} s{seed}: finished before, read back from {run_dir}")
        else:
            self.log(f"{label} {method.key} s{seed}: {steps.per_task} backprop steps per held-out task -> {run_dir}")
            started = time.perf_counter()
            device = resolve_device(self.cfg.device, "--device")
            assembled = assemble(parse_recipe(method_recipe(self.cfg, method, source, path, model_dir, seed)),
                                 device) if scale.main_model else load_final(model_dir.parent, device)
            main = assembled.method.module
            freeze(main)
            tasks = load_tasks(assembled.recipe, "test")
            records = []
            for index, task in enumerate(tasks):
                records += tune_and_predict(main, assembled.collator, task, method.peft, steps.per_task,
                                            settings["lr"], 1000 * seed + index, steps.eval_instances,
                                            assembled.recipe.evaluation.max_new_tokens,
                                            assembled.recipe.evaluation.batch_size, assembled.device,
                                            prefix_length=scale.prefix_length, lora_rank=scale.lora["rank"])
            scores = score_predictions(records)
            atomic_write_text(run_dir / "eval" / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
            atomic_write_json(scores_file, scores)
            atomic_write_json(settings_file, settings)
            entry["wall_s"] = time.perf_counter() - started
        entry["run"] = str(run_dir)
        entry["overall"] = json.loads(scores_file.read_text())["overall"]
        self.log(f"  {_scores_line(entry['overall'])}" + (f" ({entry['wall_s']:.0f} s)" if "wall_s" in entry else ""))
        self._save()


def _scores_line(overall: dict[str, Any]) -> str:
    return f"EM {overall['exact_match']:.2f}  ROUGE-L {overall['rougeL']:.2f}  ({overall['instances']} instances)"


def _device_name(name: str, torch) -> str:
    device = resolve_device(name, "--device")
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    import platform

    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
