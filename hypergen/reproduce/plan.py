"""What the reproduction study runs: the methods of the paper's Table 2 and Table 5 as recipes of the same code,
at a scale (model size) and a profile (steps) this machine or a GPU can train.

Every method starts from the same frozen "pretrained" main model M0 (no T5 can be downloaded here, so the study
trains one: multi-task fine-tuning of a tiny T5 on the training tasks, half of its examples with the demos in the
input, so that it can read demonstrations as a pretrained model can). Then, per seed:

* FT-Zero-Shot / FT-Few-Shot: M0 fine-tuned further on the training tasks without / with the demos in the input,
  for as many optimizer steps as each hypernetwork;
* Prefix-Tuning / LoRA (multi-task, FT-Few-Shot), the paper's PEFT rows: ONE prefix (one LoRA) trained over all
  training tasks with the demos in M0's input, M0 frozen; a hypernetwork recipe whose ``learned_states`` generator
  reads no demos;
* Prefix-Tuning / LoRA per task by backprop: per held-out task, fresh PEFT parameters trained on that task's demos
  (what one forward pass of a hypernetwork replaces);
* the hypernetworks, each a recipe: generator x regularizers x fusion (HyperTuning, HyperTuning w/o
  fusion-in-decoder, HyperTuning + AR, HART, HART with the layers generated in reverse order, and the ablation's
  HART without autoregressive generation);
* Table 5's first rows: HyperTuning-PT (a hypernetwork pre-trained on the training tasks' text, :func:`pretrain_recipe`,
  once per seed, then fine-tuned without fusion-in-decoder), then HyperTuning without pre-training nor fusion.

The main caveat of those toy scales, which the report states: M0 is itself multi-task fine-tuned on the training
tasks (no pretrained T5 can be had here), unlike the paper's pretrained LM, so every method starts from a model that
has seen the training tasks, and the FT baselines continue a training M0 already had.

The ``smollm2`` scale is the real one (issue 27): the frozen main model is SmolLM2-135M-Instruct (a packaged,
pretrained, instruction-tuned LM; no M0 is trained), prompted in its chat template, on real S-NI tasks. Its rows:
the frozen model itself (zero-shot, instruction, in context: what a user does without hypergen), multi-task LoRA
on the in-context format, LoRA per task, and the hypernetworks, with and without the causal analogue of
fusion-in-decoder (the hypernetwork's encoding of the demos as every layer's key/value prefix,
:meth:`hypergen.models.families.base.Family.fused`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# -------------------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One row of the study. ``kind``: "finetune" (M0 trained further, ``few_shot``: demos in its input),
    "per_task" (backprop PEFT per held-out task, ``peft``) or "hypernet" (a hypernetwork recipe: ``generator``,
    ``consistency``, ``fusion``, ``peft``, and ``few_shot`` for the demos in M0's input too, as the multi-task PEFT
    rows have them).

    HyperTuning-PT (issue 18, part B) plugs in as "hypernet" methods whose recipe starts from a pre-trained run,
    added to METHODS, TABLE2 and TABLE5 (and CONTROL: it reads demos) like the rows below."""

    key: str                      # folder name of its runs
    label: str                    # the row label in the tables
    kind: str                     # "finetune" | "per_task" | "hypernet" | "frozen" (the main model alone)
    generator: dict[str, Any] | None = None
    consistency: bool = False
    few_shot: bool = False        # the demos in the main model's input
    peft: str | None = None       # per_task / hypernet: "prefix" or "lora" (hypernet default: prefix)
    fusion: bool = True           # hypernet: fusion-in-decoder
    pretrained: bool = False      # hypernet: starts from the seed's pre-trained hypernetwork (pretrain_recipe)
    frozen: str | None = None     # frozen: the prompt (hypergen.evaluation.frozen.FROZEN_MODES)


CONSISTENCY = {"name": "local_consistency"}  # alpha: the study's --alpha, else the scale's
LEARNED = {"name": "learned_states"}  # no conditioning: the multi-task PEFT rows
PER_TASK = "per task by backprop (what one forward pass replaces)"
METHODS: dict[str, Method] = {m.key: m for m in [
    Method("hypertuning", "HyperTuning", "hypernet", {"name": "non_autoregressive"}),
    Method("hart", "HART", "hypernet", {"name": "autoregressive"}, consistency=True),
    Method("hypertuning_ar", "HyperTuning + AR", "hypernet", {"name": "autoregressive"}),
    Method("hart_no_ar", "HART w/o AR (consistency only)", "hypernet", {"name": "non_autoregressive"},
           consistency=True),
    Method("hart_reverse", "HART, layers in reverse order", "hypernet", {"name": "autoregressive", "reverse": True},
           consistency=True),
    Method("hypertuning_no_fusion", "HyperTuning w/o fusion-in-decoder", "hypernet", {"name": "non_autoregressive"},
           fusion=False),
    Method("hart_no_fusion", "HART w/o fusion-in-decoder", "hypernet", {"name": "autoregressive"}, consistency=True,
           fusion=False),
    Method("frozen_zero_shot", "Frozen model, zero-shot (the query alone)", "frozen", frozen="zero_shot"),
    Method("frozen_instruction", "Frozen model, instruction (definition + query)", "frozen", frozen="instruction"),
    Method("frozen_in_context", "Frozen model, in context (definition + 2 examples + query)", "frozen",
           frozen="in_context"),
    Method("ft_zero_shot", "FT-Zero-Shot", "finetune"),
    Method("ft_few_shot", "FT-Few-Shot", "finetune", few_shot=True),
    Method("prefix_few_shot", "Prefix-Tuning (multi-task, FT-Few-Shot)", "hypernet", LEARNED, few_shot=True,
           peft="prefix", fusion=False),
    Method("lora_few_shot", "LoRA (multi-task, FT-Few-Shot)", "hypernet", LEARNED, few_shot=True, peft="lora",
           fusion=False),
    Method("prefix_tuning", f"Prefix-Tuning, {PER_TASK}", "per_task", peft="prefix"),
    Method("lora", f"LoRA, {PER_TASK}", "per_task", peft="lora"),
    Method("hypertuning_pt", "HyperTuning-PT", "hypernet", {"name": "non_autoregressive"}, fusion=False,
           pretrained=True),
]}
# the order they run in: the headline comparison first, so a deadline cuts the least informative runs
FROZEN = ["frozen_zero_shot", "frozen_instruction", "frozen_in_context"]
RUN_ORDER = FROZEN + [key for key in METHODS if key not in FROZEN]
TABLE2 = [*FROZEN, "ft_zero_shot", "ft_few_shot", "prefix_few_shot", "lora_few_shot", "prefix_tuning", "lora",
          "hypertuning_pt", "hypertuning", "hypertuning_no_fusion", "hypertuning_ar", "hart", "hart_no_fusion",
          "hart_reverse"]
# the per-task paired comparisons the report counts (how many held-out tasks go each way), where both ran
PAIRS = [("hart", "hypertuning"), ("hart", "frozen_in_context"), ("hart_no_fusion", "hypertuning_no_fusion"),
         ("hart_no_fusion", "frozen_in_context"), ("hart", "hart_no_fusion"), ("hart", "lora_few_shot")]
# Table 5: (row label, method, autoregressive?, consistency?, fusion-in-decoder?)
TABLE5 = [("HART", "hart", True, True, True), ("- local consistency", "hypertuning_ar", True, False, True),
          ("- autoregressive generation", "hart_no_ar", False, True, True),
          ("- both (HyperTuning)", "hypertuning", False, False, True),
          ("- both, - fusion-in-decoder (HyperTuning w/o fusion)", "hypertuning_no_fusion", False, False, False)]
# Table 5's first rows, the paper's chain from HyperTuning-PT to HyperTuning: (row label, method)
TABLE5_PRETRAINING = [("HyperTuning-PT", "hypertuning_pt"), ("- continual pre-training", "hypertuning_no_fusion"),
                      ("+ fusion-in-decoder (HyperTuning)", "hypertuning")]
# the demos controls (hypergen.data.controls), run on every method that reads demos, and the results.json key of
# each control's scores in a run's entry
CONTROL = ["hypertuning", "hypertuning_ar", "hart", "hart_reverse", "hart_no_ar", "hypertuning_no_fusion",
           "hart_no_fusion", "hypertuning_pt", "ft_few_shot", "prefix_few_shot", "lora_few_shot"]
CONTROL_KEYS = {"other": "other_demos", "random": "random_demos", "none": "no_demos"}
# Figure 3: without / with autoregressive generation; Figure 4: without / with local consistency
FIGURE3 = ["hypertuning", "hypertuning_ar"]
FIGURE4 = ["hypertuning_ar", "hart"]

# ---------------------------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class Scale:
    """Model size and optimisation settings (the same for every method)."""

    name: str
    t5: dict[str, Any]
    decoder_layers: int           # k: hypernetwork decoder layers
    prefix_length: int
    batch_size: int
    hyper_lr: float
    main_lr: float
    alpha: float = 1.0            # local consistency weight
    per_task_lr: dict[str, float] = field(default_factory=lambda: {"prefix": 1e-2, "lora": 1e-3})
    warmup_steps: int = 20
    # a real pretrained main model instead of M0 (a packaged name, hub id or folder): nothing is trained before
    # the methods, which then read ``data`` (overrides of the S-NI data section), ``lora`` (the LoRA rows'
    # settings), their own ``profiles`` and, unless --methods says otherwise, ``methods``
    main_model: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=lambda: {"rank": 8})
    profiles: dict[str, dict[str, "Steps"]] | None = None
    methods: tuple[str, ...] | None = None
    control_seeds: int | None = None  # the demos controls on the first this many seeds (None: every seed)
    training: dict[str, Any] = field(default_factory=dict)    # overrides of every run's training section
    peft: str = "prefix"  # what the hypernetworks generate (a method's own ``peft`` wins)
    evaluation: dict[str, Any] = field(default_factory=dict)  # overrides of every run's evaluation section


SCALES: dict[str, Scale] = {
    # the make-demo size: trains in minutes on a 2-core CPU
    "tiny": Scale("tiny", dict(d_model=128, d_kv=32, d_ff=256, num_layers=3, num_decoder_layers=2, num_heads=4),
                  decoder_layers=2, prefix_length=8, batch_size=32, hyper_lr=3e-4, main_lr=1e-3),
    # for a GPU: T5-Small's shape (d_model 512, 6 + 6 layers, 8 heads) with a narrower gated feed-forward; a
    # training step at this size is bound by kernel launches on an H100, so a 4x larger batch costs little more
    "base": Scale("base", dict(d_model=512, d_kv=64, d_ff=1024, num_layers=6, num_decoder_layers=6, num_heads=8),
                  decoder_layers=3, prefix_length=16, batch_size=128, hyper_lr=3e-4, main_lr=5e-4,
                  per_task_lr={"prefix": 1e-2, "lora": 5e-4}, warmup_steps=100),
}

# --------------------------------------------------------------------------------------- data and profiles


@dataclass(frozen=True)
class Steps:
    main: int        # M0's multi-task fine-tuning
    train: int       # each hypernetwork
    finetune: int    # each FT baseline (continuing M0's multi-task fine-tuning on the same training tasks)
    per_task: int    # Prefix-Tuning / LoRA steps per held-out task
    eval_instances: int
    pretrain: int | None = None  # HyperTuning-PT's pre-training, once per seed (None: a third of ``train``)
    batch_size: int | None = None  # every run's batch (None: the scale's; half of it on S-NI)


LORA_RANK = 8  # the LoRA rows' rank (multi-task and per task)

# the share of training tasks held back as the validation split when alpha is swept (--alpha-grid): about 28
# of the embedded family's 1422 training tasks, 6 of sni-algo's 64
VALIDATION_FRACTION = {"embedded": 0.02, "sni": 0.1}


def data_section(source: str, path: str | None, eval_instances: int, validation: bool = False,
                 demos_in_input: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipes' ``data`` section: the embedded family (compact x>y demos) or S-NI files (Def+2Pos); with
    ``validation``, a validation split held back from the training tasks (the same for every method); with
    ``demos_in_input``, a hypernetwork recipe's main model reads the demos before each query too."""
    held_back = {"validation_tasks": VALIDATION_FRACTION[source]} if validation else {}
    if demos_in_input:
        held_back["demos_in_input"] = True
    if source == "embedded":  # path: where the tasks are written (default: .cache/hypergen/embedded)
        return {"source": "embedded", **({"path": path} if path else {}), "num_positive": 4, "max_demo_length": 64,
                "max_input_length": 32, "max_target_length": 16, "queries_per_task": 8,
                "eval_instances_per_task": eval_instances, "include_definition": False, "demo_style": "compact",
                **held_back}
    return {"source": "sni", "path": path, "num_positive": 2, "include_definition": True, "demo_style": "sni",
            "max_demo_length": 512, "max_input_length": 160, "max_target_length": 64, "queries_per_task": 4,
            "eval_instances_per_task": eval_instances, **held_back, **(overrides or {})}


def max_new_tokens(source: str) -> int:
    return 12 if source == "embedded" else 48


# (scale, profile) -> steps per data source; "sni" steps are fewer: its sequences are ~5x longer. The FT baselines
# get as many optimizer steps as each hypernetwork (and the same batch). The full profile is sized so that the
# whole study (3 seeds, 13 methods, 3 controls each, the alpha sweep) fits in 2 hours on a 2-core CPU: measured
# there, a tiny hypernetwork step takes ~0.15 s on the embedded family (batch 32) and ~0.5 s on sni-algo
# (batch 16, Def + 2 positive demos of up to 512 bytes; the full profile halves the batch), M0's ~2.5 s; on the
# embedded family the quick profile's 300 steps scored within a point of an older 1500-step study.
PROFILES: dict[str, dict[str, Steps]] = {
    "full": {"embedded": Steps(main=1500, train=400, finetune=400, per_task=40, eval_instances=16, pretrain=150),
             "sni": Steps(main=300, train=30, finetune=30, per_task=10, eval_instances=8, pretrain=10,
                          batch_size=8)},
    "quick": {"embedded": Steps(main=500, train=300, finetune=300, per_task=20, eval_instances=8, pretrain=100),
              "sni": Steps(main=150, train=100, finetune=100, per_task=10, eval_instances=8, pretrain=30)},
}

# the real model (issue 27): SmolLM2-135M-Instruct, the settings of the built-in smollm2_*_sni recipes (k = 4, LoRA
# r = 8 on q/v with B generated as zero, lr 3e-4, batch 8 as 2 tasks x 4 queries, chat prompt). The full profile
# is sized to ~3 h on this 2-core CPU with one data source (measured: a 40-step run with its evaluation ~5 min, each
# demos control ~1 min); --quick checks every row in under 20 minutes and measures nothing.
SCALES["smollm2"] = Scale(
    "smollm2", {}, decoder_layers=4, prefix_length=8, batch_size=8, hyper_lr=3e-4, main_lr=3e-5, alpha=10.0,
    per_task_lr={"lora": 1e-3, "prefix": 1e-2}, warmup_steps=4, main_model="smollm2-135m-instruct",
    data={"max_demo_length": 384, "max_input_length": 192, "max_target_length": 48, "prompt": "chat"},
    lora={"rank": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"]},
    profiles={"full": {"sni": Steps(main=0, train=40, finetune=40, per_task=20, eval_instances=5, pretrain=20,
                                    batch_size=8)},
              "quick": {"sni": Steps(main=0, train=3, finetune=3, per_task=2, eval_instances=1, pretrain=2,
                                     batch_size=8)}},
    methods=("frozen_zero_shot", "frozen_instruction", "frozen_in_context", "hart", "hypertuning", "hart_no_fusion",
             "hypertuning_no_fusion", "lora_few_shot", "lora", "hypertuning_ar", "hart_no_ar", "hart_reverse"),
    control_seeds=1, training={"max_grad_norm": 1.0}, evaluation={"max_new_tokens": 32, "batch_size": 16},
    peft="lora")


@dataclass
class StudyConfig:
    data: list[tuple[str, str | None]]   # (source "embedded" | "sni", path or None)
    seeds: int = 3
    scale: str = "tiny"
    profile: str = "full"
    steps: int | None = None             # overrides each data source's hypernetwork steps (and the FT steps)
    main_steps: int | None = None
    task_steps: int | None = None        # overrides the per-task (Prefix-Tuning / LoRA) steps
    alpha: float | None = None           # overrides the scale's local consistency weight (the paper: 1, 5, 10, 20)
    alpha_grid: tuple[float, ...] | None = None  # instead: sweep alpha, chosen on validation (see alpha_select)
    alpha_select: str = "data"           # "data": one sweep per data source (its first method with local consistency,
                                         # seed 0), the chosen alpha then used by every such method and seed;
                                         # "run": a sweep per method and seed
    device: str = "auto"
    threads: int | None = None           # torch CPU threads of every run (None: torch's default)
    out: Path = Path("runs/reproduce")
    report: Path | None = None
    methods: list[str] = field(default_factory=lambda: list(RUN_ORDER))
    deadline_s: float | None = None      # start no run after this many seconds (the report says what was skipped)
    controls: list[str] | None = None    # the methods whose demos controls run (None: every method in CONTROL)
    command: str = ""

    def steps_for(self, source: str) -> Steps:
        base = (SCALES[self.scale].profiles or PROFILES)[self.profile][source]
        return Steps(main=self.main_steps or base.main, train=self.steps or base.train,
                     finetune=self.steps or base.finetune,
                     per_task=self.task_steps or base.per_task, eval_instances=base.eval_instances,
                     pretrain=base.pretrain or max(1, (self.steps or base.train) // 3),
                     batch_size=base.batch_size)

    @property
    def name(self) -> str:
        return f"{self.scale}-{self.profile}"


# the paper's alpha grid (appendix 6.1): the full profile sweeps it unless --alpha fixes one value
PAPER_ALPHAS = (1.0, 5.0, 10.0, 20.0)


def alpha_grid_entry(alphas: tuple[float, ...]) -> str:
    """The ``--grid`` entry of an alpha sweep over the (one) local consistency regularizer."""
    return "hypernetwork.regularizers.0.alpha=" + ",".join(f"{a:g}" for a in alphas)


def data_label(source: str, path: str | None) -> str:
    return "embedded" if source == "embedded" else Path(path or "sni").name


# ------------------------------------------------------------------------------------------------ recipes


def _training(scale: Scale, steps: int, lr: float, seed: int, device: str, batch_size: int,
              threads: int | None = None) -> dict[str, Any]:
    return {"steps": steps, "batch_size": batch_size, "micro_batch_size": batch_size, "optimizer": "adamw",
            "lr": lr, "warmup_steps": min(scale.warmup_steps, steps // 10), "log_every": max(1, min(25, steps // 40)),
            "checkpoint_every": max(steps // 3, 1), "seed": seed, "device": device, **scale.training,
            **({"threads": threads} if threads else {})}


def _batch(source: str, scale: Scale, steps: Steps) -> int:
    if steps.batch_size:
        return steps.batch_size
    return scale.batch_size if source == "embedded" else scale.batch_size // 2


def main_recipe(cfg: StudyConfig, source: str, path: str | None) -> dict[str, Any]:
    """M0: the study's frozen 'pretrained' main model (seed 0, shared by every method and seed)."""
    scale, steps = SCALES[cfg.scale], cfg.steps_for(source)
    return {"kind": "finetune",
            "description": "The reproduction study's stand-in for a pretrained main model (M0).",
            "main_model": {"tiny": dict(scale.t5)}, "few_shot": False, "train_demos_fraction": 0.5,
            "data": data_section(source, path, steps.eval_instances, cfg.alpha_grid is not None),
            "training": _training(scale, steps.main, scale.main_lr, 0, cfg.device, _batch(source, scale, steps),
                                  cfg.threads),
            "evaluation": {"max_new_tokens": max_new_tokens(source), "batch_size": 32}}


def method_recipe(cfg: StudyConfig, method: Method, source: str, path: str | None, main_model_dir: Path,
                  seed: int, alpha: float | None = None) -> dict[str, Any]:
    """The recipe of a 'finetune', 'hypernet' or 'frozen' method, on M0 (``main_model_dir``) or the scale's real
    ``main_model`` (a 'frozen' method's recipe is the one its baseline is drawn from); a ``pretrained`` method starts
    from the seed's :func:`pretrain_recipe` run (:func:`pretrain_run_dir`). ``alpha``: the local consistency
    weight (default: ``cfg.alpha``, else the scale's), e.g. the one a data source's sweep chose."""
    scale, steps = SCALES[cfg.scale], cfg.steps_for(source)
    common = {"main_model": {"name_or_path": scale.main_model or str(main_model_dir)},
              "data": data_section(source, path, steps.eval_instances, cfg.alpha_grid is not None,
                                   overrides=scale.data),
              "evaluation": {"max_new_tokens": max_new_tokens(source), "batch_size": 32, **scale.evaluation}}
    if method.kind in ("finetune", "frozen", "per_task"):
        return {"kind": "finetune", "description": f"{method.label} (reproduction study)", "few_shot": method.few_shot,
                **common, "training": _training(scale, steps.finetune, scale.main_lr, seed, cfg.device,
                                                _batch(source, scale, steps), cfg.threads)}
    if method.kind != "hypernet":
        raise ValueError(f"{method.key}: no recipe for kind {method.kind!r}")
    if alpha is None:
        alpha = scale.alpha if cfg.alpha is None else cfg.alpha
    regularizers = [{**CONSISTENCY, "alpha": alpha}] if method.consistency else []
    peft = {"name": "lora", **scale.lora} if (method.peft or scale.peft) == "lora" else \
        {"name": "prefix", "length": scale.prefix_length}
    init_from = {"init_from": str(pretrain_run_dir(main_model_dir, seed))} if method.pretrained else {}
    if method.few_shot:
        common["data"] = data_section(source, path, steps.eval_instances, cfg.alpha_grid is not None, True,
                                      overrides=scale.data)
    return {"description": f"{method.label} (reproduction study)", **common,
            "hypernetwork": {"decoder_layers": scale.decoder_layers, "fusion_in_decoder": method.fusion,
                             "generator": dict(method.generator), "projector": {"name": "layerwise_mlp"},
                             "regularizers": regularizers, **init_from},
            "peft": peft,
            "training": _training(scale, steps.train, scale.hyper_lr, seed, cfg.device,
                                  _batch(source, scale, steps), cfg.threads)}


# the pre-training window per data source (tokens: c1, c2, c3, c4); an embedded task's text is ~150-300 bytes
CHUNK_LENGTHS = {"embedded": [48, 16, 12, 48], "sni": [256, 96, 48, 256]}


def pretrain_run_dir(main_model_dir: Path, seed: int) -> Path:
    """Where the seed's pre-training run lives: ``<data>/pretrain-s<seed>``, beside ``<data>/main`` (M0's run, whose
    ``model/`` is ``main_model_dir``)."""
    return Path(main_model_dir).parent.parent / f"pretrain-s{seed}"


def pretrain_recipe(cfg: StudyConfig, source: str, path: str | None, main_model_dir: Path,
                    seed: int) -> dict[str, Any]:
    """HyperTuning-PT's first stage, on M0: the hypertuning_pt method's hypernetwork pre-trained on the training
    tasks read as text (never the held-out tasks), to be fine-tuned by :func:`method_recipe` (init_from)."""
    method = METHODS["hypertuning_pt"]
    recipe = method_recipe(cfg, replace(method, pretrained=False), source, path, main_model_dir, seed)
    scale, steps = SCALES[cfg.scale], cfg.steps_for(source)
    return {**recipe, "kind": "pretrain", "description": f"{method.label}: pre-training (reproduction study)",
            "pretrain": {"chunk_lengths": CHUNK_LENGTHS[source]},
            "training": _training(scale, steps.pretrain, scale.hyper_lr, seed, cfg.device,
                                  _batch(source, scale, steps), cfg.threads)}
