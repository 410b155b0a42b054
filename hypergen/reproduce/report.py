"""The study's report: Table 2 (methods), Table 5 (ablation), the demos controls, Figures 1, 3 and 4, as Markdown
plus PNGs, from ``results.json`` and the run folders."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .paired import paired_table, scatter
from .plan import CONTROL, CONTROL_KEYS, FIGURE3, FIGURE4, METHODS, SCALES, TABLE2, TABLE5, TABLE5_PRETRAINING

LOSS_WINDOW = 10  # logged points per window of the loss variance (see hypergen.plots.loss.loss_variance)


def mean_sd(values: list[float]) -> str:
    """``mean ± sample sd`` (ddof 1) over seeds; the mean alone for one seed; a dash for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def _values(runs: dict[str, Any], key: str, metric: str, part: str = "overall") -> list[float]:
    return [seed[part][metric] for seed in runs.get(key, {}).values() if part in seed]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def table2(runs: dict[str, Any]) -> list[str]:
    lines = ["| method | EM | ROUGE-L | seeds |", "|---|---:|---:|---:|"]
    main = runs.get("main", {}).get("0", {}).get("overall")
    if main:
        lines.append(f"| M0 alone, zero-shot (the frozen main model; reference) | {main['exact_match']:.2f} | "
                     f"{main['rougeL']:.2f} | – |")
    for key in TABLE2:
        em, rl = _values(runs, key, "exact_match"), _values(runs, key, "rougeL")
        if rl or key in runs:  # rows this study did not run (the toy FT rows on the real model...) are left out
            lines.append(f"| {METHODS[key].label} | {mean_sd(em)} | {mean_sd(rl)} | {len(rl)} |")
    return lines


def table5(runs: dict[str, Any]) -> list[str]:
    lines = ["| variant | autoregressive | local consistency | fusion-in-decoder | EM | ROUGE-L | ROUGE-L vs HART |",
             "|---|:-:|:-:|:-:|---:|---:|---:|"]
    hart = _mean(_values(runs, "hart", "rougeL"))
    rows = TABLE5 + [("HART, layers in reverse order", "hart_reverse", True, True, True)]
    mark = lambda on: "✓" if on else "–"  # noqa: E731
    for label, key, ar, consistency, fusion in rows:
        em, rl = _values(runs, key, "exact_match"), _values(runs, key, "rougeL")
        delta = _mean(rl) - hart
        lines.append(f"| {label} | {mark(ar)} | {mark(consistency)} | {mark(fusion)} | {mean_sd(em)} | "
                     f"{mean_sd(rl)} | {'' if math.isnan(delta) or key == 'hart' else f'{delta:+.2f}'} |")
    return lines


def table5_pretraining(runs: dict[str, Any]) -> list[str]:
    """Table 5's first rows: HyperTuning-PT, less its pre-training, plus fusion-in-decoder (HyperTuning); then what
    the pre-training read (seed 0); empty when none of them ran."""
    if not any(key in runs for _, key in TABLE5_PRETRAINING):
        return []
    lines = ["| variant | pre-trained | fusion-in-decoder | EM | ROUGE-L | ROUGE-L vs HyperTuning-PT |",
             "|---|:-:|:-:|---:|---:|---:|"]
    pretrained = _mean(_values(runs, "hypertuning_pt", "rougeL"))
    for label, key in TABLE5_PRETRAINING:
        method = METHODS[key]
        em, rl = _values(runs, key, "exact_match"), _values(runs, key, "rougeL")
        delta = _mean(rl) - pretrained
        lines.append(f"| {label} | {'✓' if method.pretrained else '–'} | {'✓' if method.fusion else '–'} | "
                     f"{mean_sd(em)} | {mean_sd(rl)} | "
                     f"{'' if math.isnan(delta) or key == 'hypertuning_pt' else f'{delta:+.2f}'} |")
    read = runs.get("pretrain", {}).get("0", {}).get("pretrain_data")
    if read:
        lines += ["", f"Pre-training (seed 0) read {read['texts_used']} windows of {read['chunk_lengths']} tokens "
                  f"from {read['source']}; {read['texts_skipped_too_short']} of {read['texts_drawn']} texts drawn were "
                  "too short and skipped."]
    return lines


def alpha_note(results: dict[str, Any], label: str) -> list[str]:
    """Which local consistency weight the runs of data source ``label`` trained with, and how it was chosen."""
    config = results["config"]
    chosen = results.get("alpha_chosen", {}).get(label)
    if chosen is not None:
        grid = ", ".join(f"{a:g}" for a in config["alpha_grid"])
        return [f"alpha = {chosen['alpha']:g} for this data set: chosen from {grid} by validation ROUGE-L of "
                f"{METHODS[chosen['method']].label} (seed {chosen['seed']}), then used by every method with local "
                "consistency and every seed.", ""]
    if config.get("alpha_grid"):
        return ["alpha swept per method and seed (the table below).", ""]
    fixed = config.get("alpha", config.get("scale_settings", {}).get("alpha"))
    value = f"fixed at {fixed:g}" if fixed is not None else "fixed"
    return [f"alpha {value} (not swept: pass --alpha-grid to choose it on validation).", ""]


def alpha_table(runs: dict[str, Any]) -> list[str]:
    """Per method with local consistency and seed: validation ROUGE-L at each swept alpha, the chosen alpha and the
    chosen run's test ROUGE-L; empty when alpha was not swept."""
    swept = [(key, seed, entry) for key, seeds in runs.items() for seed, entry in sorted(seeds.items())
             if "alpha_sweep" in entry]
    if not swept:
        return []
    alphas = list(swept[0][2]["alpha_sweep"])
    lines = ["| method | seed | " + " | ".join(f"val. ROUGE-L, alpha={a}" for a in alphas)
             + " | chosen alpha | test ROUGE-L |", "|---|---:|" + "---:|" * len(alphas) + "---:|---:|"]
    for key, seed, entry in swept:
        cells = [f"{entry['alpha_sweep'][a]['rougeL']:.2f}" if a in entry["alpha_sweep"] else "—" for a in alphas]
        lines.append(f"| {METHODS[key].label} | {seed} | " + " | ".join(cells)
                     + f" | {entry['alpha']:g} | {entry['overall']['rougeL']:.2f} |")
    return lines


CONTROL_TITLES = {"other": "another task's demos", "random": "random demos", "none": "no demos"}


def control_gaps(runs: dict[str, Any], key: str, part: str, metric: str = "rougeL") -> list[float]:
    """Per seed, own-demos score minus the score under the control stored as ``part`` (seeds with both)."""
    return [seed["overall"][metric] - seed[part][metric] for seed in runs.get(key, {}).values()
            if "overall" in seed and part in seed]


def control_table(runs: dict[str, Any]) -> list[str]:
    """Per method that reads demos: ROUGE-L with its own demos and under each control (mean ± sd over seeds), the
    gap (own minus control, mean over seeds) and the gap's sample sd over seeds (— for one seed)."""
    head = "| method | ROUGE-L, own demos |"
    rule = "|---|---:|"
    for control in CONTROL_KEYS:
        head += f" {CONTROL_TITLES[control]} | gap | gap sd |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for key in CONTROL:
        if not any(_values(runs, key, "rougeL", part) for part in CONTROL_KEYS.values()):
            continue
        row = f"| {METHODS[key].label} | {mean_sd(_values(runs, key, 'rougeL'))} |"
        for part in CONTROL_KEYS.values():
            gaps = control_gaps(runs, key, part)
            sd = f"{statistics.stdev(gaps):.2f}" if len(gaps) > 1 else "—"
            row += (f" {mean_sd(_values(runs, key, 'rougeL', part))} | {_mean(gaps):+.2f} | {sd} |" if gaps
                    else " — | — | — |")
        lines.append(row)
    return lines


def findings(runs: dict[str, Any]) -> list[str]:
    """Plain statements read off the numbers (mean ROUGE-L over seeds), whichever way they go."""
    rl = {key: _mean(_values(runs, key, "rougeL")) for key in METHODS}
    out = []

    def compare(a: str, b: str, what: str) -> None:
        if math.isnan(rl[a]) or math.isnan(rl[b]):
            return
        verdict = "above" if rl[a] > rl[b] else "below" if rl[a] < rl[b] else "equal to"
        out.append(f"- {METHODS[a].label} is {verdict} {METHODS[b].label} ({rl[a]:.2f} vs {rl[b]:.2f} ROUGE-L){what}")

    compare("hart", "hypertuning", "; the paper reports HART above HyperTuning.")
    compare("hart", "frozen_in_context", ": the generated adapter against the demos in the prompt.")
    compare("hart_no_fusion", "hypertuning_no_fusion", ": HART against HyperTuning, both without fusion.")
    compare("hart_no_fusion", "frozen_in_context", ": the adapter alone (no fusion) against the demos in the prompt.")
    compare("hart", "hart_no_fusion", ": the effect of fusion on HART.")
    compare("hypertuning_ar", "hypertuning", ": the effect of autoregressive generation alone.")
    compare("hart", "hypertuning_ar", ": the effect of local consistency on top of it.")
    compare("hart", "hart_reverse", ": generating the layers bottom-up (the paper's order) versus top-down.")
    compare("hypertuning", "hypertuning_no_fusion", ": the effect of fusion-in-decoder.")
    compare("hart", "prefix_few_shot", "; the paper reports the hypernetworks above multi-task Prefix-Tuning.")
    compare("prefix_few_shot", "ft_few_shot", ": one prefix over all training tasks versus fine-tuning M0 itself.")
    hypernets = [k for k in ("hypertuning", "hypertuning_no_fusion", "hypertuning_ar", "hart", "hart_no_fusion",
                             "hart_no_ar", "hart_reverse") if not math.isnan(rl[k])]
    baselines = [k for k in ("frozen_zero_shot", "frozen_instruction", "frozen_in_context", "prefix_few_shot",
                             "lora_few_shot", "prefix_tuning", "lora", "ft_zero_shot", "ft_few_shot")
                 if not math.isnan(rl[k])]
    if hypernets and baselines:
        best = max(hypernets, key=rl.get)
        above = [METHODS[k].label for k in baselines if rl[k] < rl[best]]
        below = [METHODS[k].label for k in baselines if rl[k] >= rl[best]]
        out.append(f"- The best hypernetwork ({METHODS[best].label}, {rl[best]:.2f}) is above "
                   f"{', '.join(above) or 'none of the baselines'}" + (f" and not above {', '.join(below)}." if below
                                                                         else "."))
    for key in CONTROL:
        for control, part in CONTROL_KEYS.items():
            own, other = _values(runs, key, "rougeL"), _values(runs, key, "rougeL", part)
            if own and other:
                drop = _mean(own) - _mean(other)
                change = (f"drops by {drop:.2f}" if drop > 0 else f"rises by {-drop:.2f}" if drop < 0
                          else "does not change")
                out.append(f"- {METHODS[key].label} with {CONTROL_TITLES[control]}: ROUGE-L {change}"
                           + (" (it uses the demos)." if drop > 1 else
                              " (higher without its own demos: no sign that it uses them)." if drop < -1 else
                              " (under 1 point: it hardly adapts to the demos)."))
    return out


def _figure(runs: dict[str, Any], keys: list[str], out: Path, title: str) -> list[str]:
    """Loss curves of seed 0 of ``keys``, and the loss variance (mean over seeds) of each."""
    from ..plots.loss import load_metrics, plot_loss, summarize

    present = [k for k in keys if "run" in runs.get(k, {}).get("0", {})]
    if len(present) < 2:
        return [f"({title}: not enough finished runs to draw)"]
    plot_loss([runs[k]["0"]["run"] for k in present], [METHODS[k].label for k in present], out, LOSS_WINDOW)
    lines = [f"![{title}]({out.parent.name}/{out.name})", "",
             f"Loss variance: the variance of the logged training loss within windows of {LOSS_WINDOW} consecutive "
             "logged points, averaged over the windows of the second half of training (hypergen.plots.loss).", "",
             "| method | final loss (seed 0) | loss variance, mean over seeds |",
             "|---|---:|---:|"]
    for key in present:
        variances, final = [], None
        for seed, entry in sorted(runs[key].items()):
            if "run" not in entry:
                continue
            summary = summarize(METHODS[key].label, Path(entry["run"]), load_metrics(Path(entry["run"])), "loss",
                                LOSS_WINDOW)
            if summary["variance"] is not None:
                variances.append(summary["variance"])
            if seed == "0":
                final = summary["final"]
        lines.append(f"| {METHODS[key].label} | {final:.4f} | "
                     f"{statistics.fmean(variances):.3g} ({len(variances)} seeds) |" if variances else
                     f"| {METHODS[key].label} | {final} | – |")
    return lines


def _attention(runs: dict[str, Any], out: Path) -> list[str]:
    from ..plots.attention import plot_attention

    entry = runs.get("hypertuning", {}).get("0", {})
    if "run" not in entry:
        return ["(Figure 1: no finished HyperTuning run to draw)"]
    plot_attention(entry["run"], out=out)
    return [f"![Figure 1 analogue]({out.parent.name}/{out.name})"]


def _steps_note(config: dict[str, Any]) -> list[str]:
    """Whether the FT baselines had as many optimizer steps as each hypernetwork, per data source."""
    notes = []
    for label, steps in config.get("steps", {}).items():
        same = steps.get("finetune") == steps.get("train")
        notes.append(f"{label}: the FT baselines get {steps.get('finetune')} optimizer steps, "
                     + ("the same as each hypernetwork (same batch)." if same else
                        f"not the {steps.get('train')} of each hypernetwork."))
    return ([" ".join(notes), ""] if notes else [])


def include_rows(results: dict[str, Any], files: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``results`` with the rows of other studies' results.json ``files`` added where it has none of that method
    and data set; ``results["included"]`` lists each file, its command and the rows taken from it."""
    import json

    from ..errors import HypergenError

    for name in files:
        path = Path(name)
        try:
            other = json.loads(path.read_text())
            runs = other["runs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HypergenError(f"--include: {path} is not a study's results.json ({type(exc).__name__})") from None
        taken = []
        for label, methods in runs.items():
            mine = results["runs"].setdefault(label, {})
            for key, seeds in methods.items():
                if key not in mine and key in METHODS:
                    mine[key] = seeds
                    taken.append(f"{label}/{key}")
        results.setdefault("included", []).append(
            {"file": str(path), "command": other.get("config", {}).get("command", "?"), "rows": taken,
             "wall_s": other.get("wall_s")})
    return results


def write_report(results: dict[str, Any], report: Path, figures: bool = True) -> Path:
    """Write ``report`` (Markdown) and its PNGs beside it, in ``<report stem>/``."""
    report = Path(report)
    fig_dir = report.parent / report.stem
    config = results["config"]
    hours = results.get("wall_s", 0.0) / 3600
    lines = [f"# Reproduction study: {config['name']}", "",
             f"Command: `{config['command']}`  ", f"Device: {results.get('device', '?')}  ",
             f"Seeds: {config['seeds']} (hypernetwork/FT initialisation, task sampling and per-task tuning; M0 is "
             "trained once, seed 0)  ",
             f"Wall time: {results.get('wall_s', 0.0):.0f} s ({hours:.2f} h), every run included  ",
             f"Steps: {config['steps']}  ",
             f"Scale: {config['scale_settings']}", "",
             "Scores are on held-out tasks (exact match and ROUGE-L, 0-100; mean ± sample standard deviation over "
             "seeds). All methods share one frozen main model and the same evaluation instances.", ""]
    real = getattr(SCALES.get(config.get("scale")), "main_model", None)
    if real:
        lines += [f"**The real model.** The frozen main model is {real}, pretrained "
                  "and instruction-tuned, read in its chat template; no M0 is trained. The frozen rows are the "
                  "model alone: the query only, the task definition then the query, and the definition with two "
                  "positive examples then the query (in context: what a user would do without hypergen). Fusion "
                  "here is the causal analogue: the hypernetwork's encoding of the demos as a key/value prefix of "
                  "every layer.", ""]
    else:
        lines += ["**Main caveat.** M0, the frozen main model every method starts from, is itself multi-task "
                  "fine-tuned on the training tasks (no pretrained T5 can be had here), unlike the paper's "
                  "pretrained LM. Every method therefore starts from a model that has already been trained on "
                  "these tasks, and the FT baselines continue a training M0 already had; the gaps between methods "
                  "are not the paper's gaps between methods on a pretrained model. This toy study checks the "
                  "mechanics; the real-model study is --scale smollm2.", ""] + _steps_note(config)
    for part in results.get("included", []):
        lines += [f"Rows from another study ({part['file']}, `{part['command']}`, "
                  f"{(part['wall_s'] or 0):.0f} s): {', '.join(part['rows']) or 'none'}.  "]
    if results.get("included"):
        lines.append("")
    if results.get("skipped"):
        groups: dict[str, list[str]] = {}
        for skipped in results["skipped"]:
            groups.setdefault(f"{skipped['data']} seed {skipped['seed']}", []).append(skipped["method"])
        lines += [f"**Not run** ({len(results['skipped'])} runs, {results['skipped'][0]['why']}): " + "; ".join(
            f"{where}: {', '.join(methods)}" for where, methods in groups.items()) + ".", ""]
    for label, runs in results["runs"].items():
        lines += [f"## {label}", "", "### Table 2 analogue: methods", ""] + table2(runs)
        lines += ["", "### Table 5 analogue: ablation", ""] + table5(runs)
        if table5_pretraining(runs):
            lines += ["", "### Table 5 analogue: hypernetwork pre-training and fusion-in-decoder", ""]
            lines += table5_pretraining(runs)
        lines += ["", "### alpha, chosen on the validation split (training tasks held back, never test tasks)",
                  ""] + alpha_note(results, label) + alpha_table(runs)
        lines += ["", "### Control: another task's demos, random demos, no demos", "",
                  "Each held-out task evaluated with the demos of another held-out task (its neighbour in the "
                  "list), with random tokens of the same length as its demos, and with no demos "
                  "(`hypergen eval --control other|random|none`). A method that adapts to the demos should drop "
                  "under each; the gap is own minus control ROUGE-L, its sd over seeds.", ""] + control_table(runs)
        if paired_table(runs):
            lines += ["", "### Per held-out task: paired comparisons", "",
                      "ROUGE-L per task, averaged over each method's seeds; a difference under 0.5 is a tie.", ""]
            lines += paired_table(runs)
        lines += ["", "### Findings (read off the numbers above)", ""] + findings(runs)
        if figures:
            fig_dir.mkdir(parents=True, exist_ok=True)
            lines += ["", "### Figure 3 analogue: loss with and without autoregressive generation", ""]
            lines += _figure(runs, FIGURE3, fig_dir / f"{label}-fig3-autoregressive.png", "Figure 3 analogue")
            lines += ["", "### Figure 4 analogue: loss with and without local consistency", ""]
            lines += _figure(runs, FIGURE4, fig_dir / f"{label}-fig4-consistency.png", "Figure 4 analogue")
            lines += ["", "### Figure 1 analogue: HyperTuning's self-attention over the per-layer states", ""]
            lines += _attention(runs, fig_dir / f"{label}-fig1-attention.png")
            if "frozen_in_context" in runs and "hart" in runs:
                lines += ["", "### HART against in-context learning, per held-out task", ""]
                lines += scatter(runs, "hart", "frozen_in_context", fig_dir / f"{label}-hart-vs-in-context.png")
        lines.append("")
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
