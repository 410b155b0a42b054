"""``hypergen reproduce``: the paper's comparisons (Table 2, Table 5, Figures 1, 3, 4) at a scale this machine trains
(the study itself: :mod:`hypergen.reproduce`; ``python benchmarks/reproduce.py`` is the same command).

    hypergen reproduce                      # the full study: embedded + sni-algo, 3 seeds (CPU: < 2 h)
    hypergen reproduce --quick              # one seed, embedded, fewer steps (CPU: < 15 min)
    hypergen reproduce --scale base --device cuda --seeds 1 --deadline-min 7   # larger, on a GPU
    hypergen reproduce --alpha 1 --out runs/reproduce-alpha1   # alpha fixed instead of chosen on validation
    hypergen reproduce --scale smollm2      # the real model: SmolLM2-135M-Instruct on sni-mini (CPU: ~3 h)
    hypergen reproduce --scale smollm2 --quick   # every row of it once, tiny budgets (CPU: < 20 min)

Writes the runs to ``--out`` (default ``runs/reproduce``) and the report to
``benchmarks/results/reproduce/<scale>-<profile>.md`` with its PNGs beside it. Started again with the same
settings, it continues where it stopped (finished runs are read back, an interrupted one resumes).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click

from ..errors import HypergenError
from ..reproduce.plan import METHODS, PAPER_ALPHAS, RUN_ORDER, SCALES, StudyConfig

ROOT = Path(__file__).resolve().parents[2]  # the repository: its benchmarks/results/ and ../shared/data/
SNI_ALGO = ROOT.parent / "shared" / "data" / "sni-algo"
SNI_MINI = ROOT.parent / "shared" / "data" / "sni-mini"


def _data_sources(values: tuple[str, ...], quick: bool, real: bool = False) -> list[tuple[str, str | None]]:
    if not values and real:  # a real main model reads real tasks: sni-mini (83 S-NI tasks of many kinds)
        if not SNI_MINI.is_dir():
            raise HypergenError(f"--data: give an S-NI folder ({SNI_MINI} does not exist)")
        values = (str(SNI_MINI),)
    if not values:
        values = ("embedded",) if quick or not SNI_ALGO.is_dir() else ("embedded", str(SNI_ALGO))
    sources = []
    for value in values:
        if value == "embedded" and real:
            raise HypergenError("--data: a real main model's study reads S-NI folders, not 'embedded'")
        if value == "embedded":
            sources.append(("embedded", None))
        elif Path(value).is_dir():
            sources.append(("sni", str(Path(value).resolve())))
        else:
            raise HypergenError(f"--data: {value!r} is neither 'embedded' nor an S-NI folder (tasks/ and splits/)")
    return sources


@click.command("reproduce", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data", multiple=True,
              help="'embedded' or an S-NI folder; repeat for several (default: embedded, plus ../shared/data/"
                   "sni-algo when it exists and not --quick).")
@click.option("--seeds", type=click.IntRange(min=1), help="Seeds per method (default 3; --quick: 1).")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps of each hypernetwork and of each FT "
              "baseline (the same optimizer steps; default: the profile's, per data source).")
@click.option("--main-steps", type=click.IntRange(min=1), help="Steps of the main model M0 (default: the profile's).")
@click.option("--task-steps", type=click.IntRange(min=1), help="Per-task Prefix-Tuning / LoRA steps (default: the "
              "profile's).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), help="Local consistency weight of the "
              "methods that have it (default: the scale's, 1; the paper selects from 1, 5, 10, 20). Use another "
              "--out per value.")
@click.option("--alpha-grid", help="The local consistency weights to choose from on validation, e.g. 1,5,10,20 "
              "(default without --alpha: the paper's 1,5,10,20 for the full profile; --quick fixes alpha at the "
              "scale's 1). A sweep is `hypergen sweep`: one run per value, the best by validation ROUGE-L on training "
              "tasks held back from every method's training (the test tasks are never used to choose), only that run "
              "tested; the report gives the chosen alpha. 'none': no sweep.")
@click.option("--alpha-select", type=click.Choice(["data", "run"]), default="data", show_default=True,
              help="data: sweep once per data source (HART, seed 0), then every method with local consistency and "
                   "every seed uses the chosen alpha; run: a sweep per method and seed (the grid's size times those "
                   "runs).")
@click.option("--quick", is_flag=True, help="Fewer steps and instances, one seed, embedded only: a check that "
              "everything runs (under 15 min on a 2-core CPU), not a result. With --scale smollm2: every row on "
              "sni-mini with a few steps and 2 instances per task, the controls on HART only (under 20 min).")
@click.option("--scale", type=click.Choice(sorted(SCALES)), default="tiny", show_default=True,
              help="tiny: d_model 128, 3+2 layers (CPU); base: d_model 512, 6+6 layers (GPU); smollm2: the real "
                   "SmolLM2-135M-Instruct, frozen, on sni-mini (no M0; its own rows: the frozen model zero-shot, "
                   "with the instruction and in context, LoRA, the hypernetworks with and without fusion).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads of every run (default: torch's). On a "
              "CPU shared with other processes, 1 avoids threads waiting on each other: decoding SmolLM2 took 33 s "
              "with 2 threads against 6.7 s with 1 on this 2-core machine under load.")
@click.option("--methods", help=f"Comma-separated subset of: {', '.join(RUN_ORDER)} (default: all).")
@click.option("--deadline-min", type=click.FloatRange(min=0), help="Start no run after this many minutes; the "
              "report lists what was left out.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/reproduce", show_default=True)
@click.option("--report", type=click.Path(dir_okay=False),
              help="Markdown report (default: benchmarks/results/reproduce/<scale>-<profile>.md).")
@click.option("--fresh", is_flag=True, help="Retrain runs whose folders hold other settings.")
@click.option("--include", multiple=True, type=click.Path(dir_okay=False),
              help="With --report-only: another study's results.json (repeatable) whose rows this report shows too, "
                   "where this study has none of its own (e.g. rows run with other --methods in parallel); the "
                   "report names each file and its command.")
@click.option("--report-only", is_flag=True, help="Train nothing: write the report from what results.json holds so "
              "far (e.g. while a long study still runs).")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
def reproduce(debug: bool, **options) -> None:
    """Train and evaluate every method of the comparison on held-out tasks; write tables and figures."""
    try:
        run(**options)
    except HypergenError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _alpha_grid(value: str | None, alpha: float | None, quick: bool) -> tuple[float, ...] | None:
    if value is None:  # the full study chooses alpha as the paper does, unless one is given
        return None if quick or alpha is not None else PAPER_ALPHAS
    if value == "none":
        return None
    if alpha is not None:
        raise HypergenError("--alpha-grid: give --alpha (one fixed value) or --alpha-grid (a sweep), not both")
    try:
        alphas = tuple(float(a) for a in value.split(","))
    except ValueError:
        raise HypergenError(f"--alpha-grid: expected comma-separated numbers, got {value!r}") from None
    if len(set(alphas)) != len(alphas) or min(alphas) <= 0:
        raise HypergenError(f"--alpha-grid: expected distinct positive numbers, got {value!r}")
    return alphas


def run(data, seeds, steps, main_steps, task_steps, alpha, alpha_grid, alpha_select, quick, scale, device, threads,
        methods, deadline_min, out, report, fresh, report_only, include) -> None:
    from ..reproduce.report import write_report
    from ..reproduce.study import Study

    chosen = [m.strip() for m in methods.split(",")] if methods else list(SCALES[scale].methods or RUN_ORDER)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise HypergenError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(RUN_ORDER)}")
    real = SCALES[scale].main_model is not None
    # the run order: the scale's own (its headline rows first, so a deadline cuts the least informative), then the rest
    order = list(dict.fromkeys([*(SCALES[scale].methods or ()), *RUN_ORDER]))
    if real and any(METHODS[m].kind == "finetune" for m in chosen):
        raise HypergenError(f"--methods: the {scale} scale fine-tunes no main model (FT-Zero-Shot / FT-Few-Shot "
                            "rows are the toy scales')")
    cfg = StudyConfig(data=_data_sources(data, quick, real), seeds=seeds or (1 if quick else 3), scale=scale,
                      profile="quick" if quick else "full", steps=steps, main_steps=main_steps,
                      task_steps=task_steps, alpha=alpha, alpha_grid=_alpha_grid(alpha_grid, alpha, quick),
                      alpha_select=alpha_select,
                      device=device, threads=threads,
                      out=Path(out), methods=[m for m in order if m in chosen],
                      deadline_s=None if deadline_min is None else 60 * deadline_min,
                      controls=["hart"] if quick and real else None,  # --quick: the controls' mechanics, once
                      command=invocation())
    report_path = Path(report) if report else ROOT / "benchmarks" / "results" / "reproduce" / f"{cfg.name}.md"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per run
    started = time.perf_counter()
    study = Study(cfg, log=lambda m: click.echo(m, err=True), fresh=fresh)
    if report_only:
        if not study.results_path.is_file():
            raise HypergenError(f"--report-only: {study.results_path} does not exist (run the study first)")
        from ..reproduce.report import include_rows

        results = include_rows(json.loads(study.results_path.read_text()), include)
        click.echo(f"report written to {write_report(results, report_path)}")
        return
    if include:
        raise HypergenError("--include: only with --report-only")
    try:
        study.run()
    finally:  # a failed or interrupted study still reports what it finished
        written = write_report(study.results, report_path)
    click.echo(f"report written to {written} ({time.perf_counter() - started:.0f} s this sitting)")


def invocation() -> str:
    """The command line as typed: ``hypergen reproduce ...`` or ``python benchmarks/reproduce.py ...``."""
    words = [shlex.quote(a) for a in sys.argv]
    return " ".join(["hypergen", *words[1:]] if Path(sys.argv[0]).name == "hypergen" else ["python", *words])
