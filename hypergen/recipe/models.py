"""Recipes: pydantic models of a run's JSON file. Extra keys are forbidden; errors name the field's path.

A hypernetwork recipe names its components by registered name plus parameters, e.g.
``"generator": {"name": "autoregressive", "reverse": false}``, so HART, HyperTuning and hybrids are the same trainer
with different recipes. A finetune recipe (``"kind": "finetune"``) multi-task fine-tunes a main model; a pretrain
recipe (``"kind": "pretrain"``) pre-trains a hypernetwork on raw text (HyperTuning-PT, :mod:`.pretrain`).
The defaults here are the paper's (appendix 6.1.3); the tiny recipes override them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .checks import Strict, tiny_architecture
from .pretrain import Pretrain


class ComponentSpec(BaseModel):
    """A registered component: ``name`` plus its constructor's parameters as further keys."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TinyT5(Strict):
    """A tiny main model built from a config with random weights and the file-less ByT5 tokenizer (byte level):
    a T5 (``architecture`` "t5", the default) or a causal LM (a family's: llama, qwen2, mistral, gemma3, gpt2), reading
    ``d_model`` as its hidden size, ``d_kv`` as its head width, ``d_ff`` as its MLP width, ``num_layers`` its layers
    (``num_decoder_layers``, ``feed_forward_proj`` are T5's)."""

    architecture: Annotated[str, AfterValidator(tiny_architecture)] = "t5"

    d_model: int = Field(128, gt=0)
    d_kv: int = Field(32, gt=0)
    d_ff: int = Field(256, gt=0)
    num_layers: int = Field(3, gt=0)
    num_decoder_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    dropout_rate: float = Field(0.0, ge=0, lt=1)
    feed_forward_proj: str = "gated-gelu"
    seed: int = 0
    num_key_value_heads: int | None = Field(None, gt=0, description="a causal LM's key/value heads (grouped-query "
                                            "attention; default: num_heads)")
    vocab_size: int | None = Field(None, ge=384, description="embedding rows (default: the ByT5 tokenizer's 384); more, e.g. T5's 32128, for a model of a real vocabulary's size (the extra rows are never used)")


class MainModel(Strict):
    """Exactly one of ``name_or_path`` (hub id, HF folder, GGUF file or folder, packaged model name) and ``tiny``."""

    name_or_path: str | None = None
    tiny: TinyT5 | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _one_source(self) -> "MainModel":
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("set exactly one of name_or_path (hub id or local folder) and tiny")
        return self


class Hypernetwork(Strict):
    decoder_layers: int = Field(8, ge=1, description="k: the first k main-model decoder layers form H_dec")
    fusion_in_decoder: bool = True
    generator: ComponentSpec = ComponentSpec(name="autoregressive")
    projector: ComponentSpec = ComponentSpec(name="layerwise_mlp")
    regularizers: list[ComponentSpec] = Field(default_factory=list)
    init_from_main: bool = True
    init_from: str | None = Field(
        None, description="a run folder (e.g. a pretrain run): training starts from its hypernetwork's final "
        "weights, or its latest checkpoint's; the shapes must match this recipe's")


class Data(Strict):
    source: Literal["sni", "embedded", "p3"] = "sni"
    path: str | None = Field(None, description="S-NI folder (tasks/ and splits/); embedded: where tasks are written")
    split: str = "default"
    train_split_file: str | None = None
    test_split_file: str | None = None
    num_positive: int = Field(2, ge=0, description="Def+kPos: positive examples in the demos")
    include_definition: bool = True
    demo_style: Literal["sni", "compact", "shots"] = Field(
        "sni", description="sni: Def+kPos text; compact: x>y pairs; shots: P3's concatenated prompted examples")
    max_demo_length: int = Field(1024, gt=0)
    max_input_length: int = Field(384, gt=0)
    max_target_length: int = Field(128, gt=0)
    queries_per_task: int = Field(1, ge=1, description="queries sharing one hypernetwork pass (1: the paper)")
    proportional_sampling: bool = True
    max_train_instances_per_task: int | None = Field(
        None, ge=1, description="training tasks are sampled as if they had at most this many instances (a fixed "
        "subset of each larger task); off by default, Tk-Instruct uses 100")
    eval_instances_per_task: int = Field(100, ge=1)
    embedded_seed: int = 0
    p3_train_datasets: list[str] | None = Field(None, description="P3 subset-name prefixes to train on (T0's)")
    p3_eval_datasets: list[str] | None = Field(None, description="P3 prefixes to evaluate on (T0's held-out)")
    p3_max_avg_input_tokens: float | None = Field(320, gt=0, description="drop training subsets longer on average")
    validation_tasks: float | list[str] | None = Field(
        None, description="the validation split, held back from the training tasks (never test tasks) and never "
        "sampled in training: a fraction of them (drawn with validation_seed) or their names; periodic evaluation "
        "and `hypergen sweep` score it")
    validation_seed: int = Field(0, description="seed of the draw of a validation_tasks fraction")
    demos_in_input: bool = Field(
        False, description="hypernetwork recipes: put each task's demos before every query in the main model's "
        "input too, in training and evaluation, as FT-Few-Shot formats them (with the learned_states generator: "
        "Prefix-Tuning / LoRA on FT-Few-Shot); finetune recipes set few_shot instead")
    prompt: Literal["auto", "chat", "plain"] = Field("auto", description="a causal main model's prompt; chat: the "
        "query (after the demos if in the input) as a user turn of the tokenizer's chat template, the answer its reply "
        "closed by the end-of-turn token; plain: the demo style's Input:/Output: text (base models, T5); auto: chat "
        "when the model is causal and its tokenizer has a chat template, else plain")

    @field_validator("validation_tasks")
    @classmethod
    def _validation_share(cls, value: float | list[str] | None) -> float | list[str] | None:
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError("expected a fraction between 0 and 1 (exclusive) or a list of task names")
        if isinstance(value, list) and not value:
            raise ValueError("expected a fraction between 0 and 1 (exclusive) or a non-empty list of task names")
        return value

    @model_validator(mode="after")
    def _path_for_sni(self) -> "Data":
        if self.source in ("sni", "p3") and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


class GradientCheckpointing(Strict):
    """Recompute activations in the backward pass instead of keeping them: less memory, about a third more compute.

    ``hypernetwork``: the hypernetwork's encoder blocks, and its decoder blocks where they run without a KV cache
    (HyperTuning's one pass; HART with ``use_cache: false``); HART's cached decoder steps are not checkpointed (the
    cache is written in place, so a recomputation would write it twice). ``main_model``: every block of the frozen
    main model (its activations are kept for the gradients that flow through it to the generated parameters)."""

    hypernetwork: bool = False
    main_model: bool = False


class Distributed(Strict):
    """Training in several processes, one per GPU (``torchrun --nproc_per_node N``, or ``deepspeed --no_local_rank
    --num_gpus N``).

    Each process samples its own tasks (seed + rank) and runs ``batch_size / (micro_batch_size x world size)``
    micro-batches per step; the gradients are averaged over the processes, so the step sees ``batch_size``
    examples whatever the world size. Rank 0 alone writes logs, checkpoints and the final weights. Launched as a
    single process, a recipe with this section trains as without it (precision still applies; ``deepspeed`` runs
    its engine in a one-process group).

    ``backend: "deepspeed"`` hands the step to a DeepSpeed engine (hypergen/training/backends/deepspeed.py): ZeRO
    stage 1, 2 or 3 partitions the optimizer state (1), also the gradients (2), also the weights (3) over the
    processes; the optimizer is still hypergen's (AdamW or 8-bit Adam, as DeepSpeed's client optimizer).

    Precision is one setting, ``training.precision``, for one process as for several; ``distributed.precision``
    (where it was set before) is still read, as ``training.precision``, and read back here as :attr:`precision`
    (DeepSpeed's ``bf16`` section follows it: bf16 module copies, fp32 master weights in the optimizer)."""

    _precision: Literal["fp32", "bf16"] = PrivateAttr("fp32")

    backend: Literal["ddp", "deepspeed"] = Field(
        "ddp", description="ddp: torch.distributed, gradients all-reduced (nccl on GPU, gloo on CPU); deepspeed: "
        "a DeepSpeed engine with ZeRO (zero_stage 1-3), hypergen's optimizer as its client optimizer")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage: 1-3 with deepspeed, 0 with ddp")
    offload_optimizer: bool = Field(
        False, description="deepspeed: optimizer state and step in CPU memory (ZeRO-Offload); needs optimizer "
        "'adamw' (run as DeepSpeedCPUAdam)")
    world_size: int | None = Field(
        None, ge=1, description="the number of processes the recipe was sized for (the paper: 8 GPUs); a "
        "multi-process launch with another number warns; the global batch_size is kept either way")

    @property
    def precision(self) -> str:
        """``training.precision`` of the recipe this section belongs to (set when the recipe is validated)."""
        return self._precision

    @model_validator(mode="after")
    def _stages(self) -> "Distributed":
        if self.backend == "ddp" and (self.zero_stage or self.offload_optimizer):
            raise ValueError("zero_stage and offload_optimizer need backend 'deepspeed'; with 'ddp' set zero_stage "
                             "0 and offload_optimizer false")
        if self.backend == "deepspeed" and not self.zero_stage:
            raise ValueError("zero_stage: backend 'deepspeed' needs ZeRO stage 1, 2 or 3 (stage 0, plain data "
                             "parallelism, is backend 'ddp')")
        return self

    def check_training(self, training: "Training") -> None:
        """What this section cannot run with the recipe's ``training`` section: a ValueError naming the field."""
        if self.offload_optimizer and training.optimizer == "adam8bit":
            raise ValueError(
                "distributed.offload_optimizer: ZeRO-Offload runs the optimizer step on the CPU with DeepSpeed's CPU "
                "Adam; 8-bit Adam (training.optimizer 'adam8bit') cannot be offloaded. Set training.optimizer to "
                "'adamw' (run as DeepSpeedCPUAdam) or offload_optimizer to false")


class Training(Strict):
    steps: int = Field(10_000, ge=1)
    batch_size: int = Field(256, ge=1, description="examples per optimizer step (accumulated)")
    micro_batch_size: int = Field(8, ge=1, description="examples per forward pass")
    optimizer: Literal["adamw", "adam8bit"] = "adam8bit"
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 42
    log_every: int = Field(10, ge=1)
    eval_every: int | None = Field(None, ge=1)
    eval_tasks: int = Field(4, ge=1, description="validation tasks in periodic evaluation")
    eval_instances: int = Field(16, ge=1, description="instances per task in periodic evaluation")
    checkpoint_every: int | None = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    gradient_checkpointing: GradientCheckpointing | bool = Field(
        False, description="true/false for both, or {\"hypernetwork\": bool, \"main_model\": bool}")
    on_nonfinite: Literal["skip", "stop"] = Field(
        "skip", description="a NaN/infinite loss or gradient: skip that update (the step still counts) or stop "
        "with an error naming the step; either way it never reaches the weights or a checkpoint")
    max_consecutive_skips: int | None = Field(
        25, ge=1, description="stop with an error after this many skipped updates in a row (a run that has "
        "diverged); null: never")
    loggers: list[ComponentSpec] = Field(
        default_factory=list, description="where logged metrics go besides RUN/metrics.jsonl (always written): "
        "registered metric loggers, e.g. [{\"name\": \"tensorboard\"}] or [{\"name\": \"wandb\", \"project\": "
        "\"hart\"}]")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the main model's and the hypernetwork's forward (and backward) under bfloat16 "
        "autocast, in one process as in several; the trained weights and the optimizer stay fp32 (deepspeed: bf16 "
        "module copies, fp32 master weights in the optimizer). The one precision setting: a recipe's "
        "distributed.precision, its old place, is read as this field")
    compile: bool = Field(
        False, description="torch.compile each block of the main model and of the hypernetwork (per block, so "
        "recompilation stays local); needs a working C compiler on CPU (benchmarks/results/throughput_sdpa.md)")

    @model_validator(mode="after")
    def _micro_divides(self) -> "Training":
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                             f"({self.micro_batch_size})")
        return self

    @property
    def checkpointing(self) -> GradientCheckpointing:
        """``gradient_checkpointing`` as the two switches (a boolean sets both)."""
        value = self.gradient_checkpointing
        if isinstance(value, bool):
            return GradientCheckpointing(hypernetwork=value, main_model=value)
        return value


def _precision_in_training(data: Any) -> Any:
    """A recipe validator, before the fields: ``distributed.precision``, precision's place before it was one field,
    moved to ``training.precision`` (two different values are an error naming both fields)."""
    if not isinstance(data, dict) or not isinstance(data.get("distributed"), dict):
        return data
    if "precision" not in data["distributed"]:
        return data
    distributed = dict(data["distributed"])
    value = distributed.pop("precision")
    training = data.get("training", {})
    if isinstance(training, dict):
        if "precision" in training and training["precision"] != value:
            raise ValueError(f"training.precision ({training['precision']!r}) and distributed.precision ({value!r}) "
                             "disagree; precision is one setting, training.precision (distributed.precision, its "
                             "old place, is still read): set training.precision alone")
        training = {**training, "precision": value}
    return {**data, "distributed": distributed, "training": training}


def _distributed_fits_training(recipe):
    """A recipe validator: its ``distributed`` section can run its ``training`` section, and reads its precision."""
    distributed, training = recipe.distributed, recipe.training
    if distributed is None:
        return recipe
    distributed.check_training(training)
    distributed._precision = training.precision
    return recipe


class Evaluation(Strict):
    max_new_tokens: int = Field(128, ge=1)
    num_beams: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)


class HypernetRecipe(Strict):
    kind: Literal["hypernetwork"] = "hypernetwork"
    description: str = ""
    main_model: MainModel
    hypernetwork: Hypernetwork = Hypernetwork()
    peft: ComponentSpec = ComponentSpec(name="prefix", length=32)
    data: Data
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    distributed: Distributed | None = None

    _one_precision = model_validator(mode="before")(_precision_in_training)
    _check_distributed = model_validator(mode="after")(_distributed_fits_training)


class FinetuneRecipe(Strict):
    """Multi-task fine-tuning of the main model itself (FT-Zero-Shot, or FT-Few-Shot with ``few_shot``)."""

    kind: Literal["finetune"]
    description: str = ""
    main_model: MainModel
    few_shot: bool = Field(False, description="prepend the task's demos to the input (FT-Few-Shot)")
    train_demos_fraction: float | None = Field(
        None, ge=0, le=1, description="share of training examples with demos in the input (default: 1 if few_shot "
        "else 0); a mix trains a main model that can read demos, as a pretrained one can")
    data: Data
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    distributed: Distributed | None = None

    _one_precision = model_validator(mode="before")(_precision_in_training)
    _check_distributed = model_validator(mode="after")(_distributed_fits_training)

    @model_validator(mode="after")
    def _few_shot_not_demos_in_input(self) -> "FinetuneRecipe":
        if self.data.demos_in_input:
            raise ValueError("data.demos_in_input: a finetune recipe puts the demos in the input with few_shot "
                             "(and train_demos_fraction); set few_shot true and data.demos_in_input false")
        return self


class PretrainRecipe(HypernetRecipe):
    """HyperTuning-PT's first stage: the hypernetwork trained on raw text cut into four chunks (``pretrain``); the
    rest is a hypernetwork recipe's. ``data`` names the tasks the pre-training prepares for; their training tasks'
    instances are the text when ``pretrain.corpus`` is not set (never a test task's). No held-out evaluation."""

    kind: Literal["pretrain"]
    pretrain: Pretrain


Recipe = HypernetRecipe | FinetuneRecipe | PretrainRecipe
RECIPE_KINDS = {"finetune": FinetuneRecipe, "pretrain": PretrainRecipe}  # else "hypernetwork"


def recipe_sections() -> frozenset[str]:
    """Every top-level key a recipe of any kind may hold (``main_model``, ``training``, ``few_shot``, ...), read
    from the models above."""
    return frozenset().union(*(model.model_fields for model in (HypernetRecipe, *RECIPE_KINDS.values())))
