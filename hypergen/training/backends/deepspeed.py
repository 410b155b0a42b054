"""The DeepSpeed engine behind ``distributed.backend: "deepspeed"``: build it and its config from the recipe, run
its backward and step for the Trainer, gather the full fp32 weights, save and load its own state.

The Trainer's loop is the same for every backend (:mod:`.base`); this module is the DeepSpeed side of it (the torch
side is :mod:`.torch`). What the engine is given:

* the trained module (the hypernetwork, or the main model for fine-tuning), wrapped so that its forward returns its
  output's tensors in a tuple: DeepSpeed finds the tensors it hooks (ZeRO-3 re-gathers weights for backward from
  them, the engine starts its backward bookkeeping from them) only in tensors, tuples, lists and dicts, and the
  hypernetwork returns a dataclass. While the method computes its loss (:meth:`DeepSpeedBackend.forward`) its
  ``module`` calls go through the engine and get the dataclass back;
* hypergen's own optimizer as DeepSpeed's client optimizer: AdamW, or bitsandbytes' 8-bit Adam (refused at once,
  as without DeepSpeed, where bitsandbytes cannot be used); with ``offload_optimizer`` DeepSpeed's CPU Adam (the AdamW update) since
  ZeRO-Offload steps on the CPU, and 8-bit Adam is refused there (by the recipe's validation);
* hypergen's linear schedule, stepped by the engine after each applied update (and here after a skipped one, so
  that the schedule counts every step, as without DeepSpeed);
* the config (:func:`engine_config`): ``train_batch_size`` = training.batch_size, micro-batches of
  training.micro_batch_size, the accumulation steps that make up the global batch over the processes,
  ``gradient_clipping`` = training.max_grad_norm, ``zero_optimization.stage`` (+ ``offload_optimizer`` on the CPU),
  ``bf16`` for precision bf16: the engine keeps bf16 copies of the weights for forward and backward (run under
  bfloat16 autocast, as without DeepSpeed) and fp32 master weights in the optimizer; hypergen saves the fp32
  masters.

Non-finite values (``training.on_nonfinite``). Every loss is checked before its backward, and the processes agree
on it at every micro-batch (with ZeRO-2/3 each backward already reduces gradients, so all processes must run the
same backward passes). DeepSpeed has no public call that drops gradients accumulated so far; what it does offer is
to skip an update whose gradient norm is not finite (ZeRO 1-3, fp32 and bf16: it zeroes the gradients and leaves
weights, optimizer state and schedule untouched). So a non-finite loss ends the step at once: the processes close
the accumulation with a backward pass of NaN (``loss x NaN``), the engine skips the update, and hypergen steps the
schedule and reports the skip (or stops). A NaN or infinite gradient from a finite loss is skipped by the engine
the same way and reported after the step. The weights never see a non-finite value, and a skipped step still
counts, as without DeepSpeed.

Checkpoints. hypergen's files stay as they are (model.safetensors holds the full fp32 weights, gathered from the
processes also under ZeRO-3, so a checkpoint is usable in one process); the engine's optimizer partitions and
schedule go to ``deepspeed/engine/`` inside the same atomic checkpoint folder via ``engine.save_checkpoint`` (all
processes write their partition) and come back with ``engine.load_checkpoint`` on ``--resume`` (same number of
processes). Those files are DeepSpeed's torch.save pickles: the one place in a run folder that is not safetensors
or JSON, read only by DeepSpeed when resuming a run one made.

ZeRO-3 partitions the weights too: a generator's own parameters (z) are kept gathered from its forward to the step
(:func:`_keep_generator_parameters`), and a periodic evaluation runs in every process, through the engine.

After training, :meth:`DeepSpeedBackend.finish` puts the full fp32 weights back into the module as plain tensors and
releases the engine, so that saving ``hypernetwork.safetensors`` and evaluating work in one process as always.

The first engine of a machine compiles a small DeepSpeed op (a minute or two on a CPU); it is kept in
``TORCH_EXTENSIONS_DIR``, which defaults here to ``.cache/torch_extensions`` in the repository (or the current
folder), so later runs reuse it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ...components.base import Generator
from ...errors import HypergenError, RecipeError
from ..distributed import Dist
from ..optim import linear_schedule, make_optimizer, optimizer_name
from .base import Method

ENGINE_DIR = "deepspeed"  # the engine's sub-folder of a checkpoint
ENGINE_TAG = "engine"     # DeepSpeed's tag (one more folder level) inside it


def engine_config(section, training, world_size: int, accumulation: int) -> dict[str, Any]:
    """The DeepSpeed config for a recipe's ``distributed`` and ``training`` sections."""
    zero: dict[str, Any] = {"stage": section.zero_stage}
    if section.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if training.micro_batch_size * accumulation * world_size != training.batch_size:
        raise HypergenError(f"training.batch_size ({training.batch_size}) is not micro_batch_size x accumulation x "
                            f"processes ({training.micro_batch_size} x {accumulation} x {world_size})")
    return {
        "train_batch_size": training.batch_size,
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": float(training.max_grad_norm or 0.0),
        "zero_optimization": zero,
        # check_grad_overflow: skip an update whose gradient norm is NaN/inf (fp32 ZeRO checks that by itself)
        "bf16": {"enabled": section.precision == "bf16", "check_grad_overflow": True},
        "zero_allow_untested_optimizer": True,  # the client optimizer is hypergen's (AdamW / 8-bit Adam)
        "steps_per_print": 1 << 62,  # hypergen logs
        "wall_clock_breakdown": False,
    }


def default_extensions_dir() -> None:
    """``TORCH_EXTENSIONS_DIR`` (where DeepSpeed's compiled ops are kept), unless set: ``.cache/torch_extensions``
    in the repository hypergen runs from (an editable install), else in the current folder."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return
    repository = Path(__file__).resolve().parents[3]
    root = repository if (repository / "pyproject.toml").is_file() else Path.cwd()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root / ".cache" / "torch_extensions")


def import_deepspeed():
    default_extensions_dir()
    try:
        import deepspeed
    except ImportError as exc:
        raise RecipeError(f"distributed.backend 'deepspeed': DeepSpeed is not installed ({exc}); pip install "
                          "'hypergen[scale]' (or deepspeed), or use backend 'ddp'") from None
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # its INFO lines (config, timers) would drown hypergen's
    if not any(isinstance(f, _HandledOutputs) for f in logger.filters):
        logger.addFilter(_HandledOutputs())
    return deepspeed


class _HandledOutputs(logging.Filter):
    """Drops ZeRO-3's warning that it cannot see into hypergen's output dataclasses: the generator's parameters are
    kept for backward (:func:`_keep_generator_parameters`) and the hypernetwork itself owns none."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("unknown inputs or outputs type" in message
                    and ("GeneratedStates" in message or "TaskParameters" in message))


class DeepSpeedBackend:
    """The engine as the Trainer's :class:`~hypergen.training.backends.base.Backend`."""

    name = "deepspeed"
    optimizer_name = ""  # the client optimizer's class, set when the engine is built

    def __init__(self, method: Method, cfg, section, dist: Dist, accumulation: int) -> None:
        deepspeed = import_deepspeed()
        self.method, self.cfg, self.section, self.dist = method, cfg, section, dist
        self.accumulation = accumulation
        self.module: nn.Module = method.module
        optimizer = client_optimizer(self.module, cfg, section)
        self.optimizer_name = optimizer_name(optimizer)
        self.scheduler = linear_schedule(optimizer, cfg.warmup_steps, cfg.steps)
        self.visible = _TensorsOut(self.module)
        config = engine_config(section, cfg, dist.world_size, accumulation)
        self.engine, _, _, _ = deepspeed.initialize(model=self.visible, optimizer=optimizer,
                                                    lr_scheduler=self.scheduler, config=config,
                                                    dist_init_required=False)
        if section.zero_stage == 3:
            _keep_generator_parameters(deepspeed, self.module)
        self.autocast = section.precision == "bf16"

    # -- the step --------------------------------------------------------------------------------------------------
    @property
    def evaluate_on_every_rank(self) -> bool:
        """ZeRO-3 partitions the weights: a forward pass (an evaluation) needs every process."""
        return self.section.zero_stage == 3

    @contextmanager
    def eval_context(self) -> Iterator[None]:
        """A periodic evaluation, like the loss, runs the module through the engine; with bf16 (the module's weights
        are bf16 copies during training) under autocast, as in training."""
        autocast = torch.autocast(_device_type(self.module), dtype=torch.bfloat16) if self.autocast else nullcontext()
        with autocast, self.forward():
            yield

    def zero_grad(self) -> None:
        """Nothing to do: the engine zeroes the gradients after each update (or skipped update)."""

    @contextmanager
    def forward(self, last: bool = True) -> Iterator[None]:
        """While the method computes its loss, its module's forward runs through the engine."""
        self.method.module = _EngineCall(self.engine, self.visible)
        try:
            yield
        finally:
            self.method.module = self.module

    def backward(self, loss: torch.Tensor, last: bool) -> str | None:
        """Backward of one micro-batch's loss (``last``: it ends the step), unless it is non-finite in some
        process; then the step is dropped (see the module docstring) and the problem returned. (Checked at every
        micro-batch: the engine steps at each one and must not see a non-finite loss's gradients.)"""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.dist.any(bad):  # every process, every micro-batch: all run the same backward passes
            problem = f"non-finite loss ({loss.item()})" if bad else "non-finite loss in another process"
            self.engine.set_gradient_accumulation_boundary(True)
            self.engine.backward(loss * float("nan"))  # a NaN gradient norm: the engine skips the update
            self.engine.step()
            if self.engine.was_step_applied():
                raise HypergenError("DeepSpeed applied an update after a non-finite loss; stopping before the "
                                    "weights are checkpointed (is bf16.check_grad_overflow off?)")
            return problem
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss)
        self.engine.step()  # the update at the step's last micro-batch; before it, only counts the micro-batch
        return None

    def step(self, problem: str | None) -> str | None:
        """Finish the step (the engine updated at the last micro-batch): report a skipped update; step the
        schedule when the engine did not (it only does after an applied update)."""
        if problem is None and not self.engine.was_step_applied():
            norm = self.engine.get_global_grad_norm()
            problem = f"non-finite gradient norm ({float(norm) if norm is not None else float('nan')})"
        if problem is not None:
            self.scheduler.step()
        return problem

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # -- weights and state -----------------------------------------------------------------------------------------
    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """The module's full fp32 weights (the optimizer's masters; gathered under ZeRO-3), as its state_dict on
        CPU, on rank 0 (None elsewhere). A collective: every process must call it."""
        weights = self._gather()
        return weights if self.dist.is_main else None

    def _gather(self) -> dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_fp32_param

        full: dict[int, torch.Tensor] = {}
        for parameter in self.module.parameters():
            value = safe_get_full_fp32_param(parameter)  # collective (ZeRO-1/2: all-reduce, ZeRO-3: all-gather)
            if value is None:  # a parameter the optimizer does not hold (frozen): the module's own copy
                value = parameter.detach()
            full[id(parameter)] = value.detach().float().cpu().clone()
        out = {}
        for name, tensor in self.module.state_dict(keep_vars=True).items():
            out[name] = full[id(tensor)] if id(tensor) in full else tensor.detach().cpu().clone()
        return out

    def optimizer_state(self) -> dict[str, Any]:
        """What hypergen's optimizer.json says of it: the engine's state is in the checkpoint's engine folder."""
        return {"backend": "deepspeed", "zero_stage": self.section.zero_stage, "engine": f"{ENGINE_DIR}/{ENGINE_TAG}"}

    def save(self, folder: Path) -> None:
        """The engine's state into ``folder/deepspeed`` (a collective: every process writes its partition)."""
        self.engine.save_checkpoint(str(Path(folder) / ENGINE_DIR), tag=ENGINE_TAG, client_state={},
                                    save_latest=False)

    def load(self, folder: Path, model_state: dict[str, torch.Tensor], optimizer: Any) -> None:
        """Restore the engine (weights, optimizer partitions, schedule) from a checkpoint folder (a collective).
        ``model_state`` (hypergen's copy of the weights) is not needed: the engine's own files hold them."""
        if not isinstance(optimizer, dict) or optimizer.get("backend") != "deepspeed":
            raise HypergenError(f"{folder}: not written by a run with distributed.backend 'deepspeed'; resume it "
                                "with the backend that wrote it")
        if optimizer.get("zero_stage") != self.section.zero_stage:
            raise HypergenError(f"{folder}: written with ZeRO stage {optimizer.get('zero_stage')}; resume it with "
                                f"the same distributed.zero_stage (this recipe has {self.section.zero_stage})")
        path, _ = self.engine.load_checkpoint(str(Path(folder) / ENGINE_DIR), tag=ENGINE_TAG,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise HypergenError(f"{folder / ENGINE_DIR}: DeepSpeed could not load its checkpoint")

    def finish(self) -> None:
        """After training: the full fp32 weights back into the module as plain tensors, the engine released, so
        that the module is an ordinary one (saved and evaluated in one process). A collective."""
        weights = self._gather()
        self.engine.destroy()  # removes ZeRO-3's hooks
        keep = self.dist.is_main or self.section.zero_stage < 3  # ZeRO-3: only rank 0 uses the module after this
        for name, parameter in self.module.named_parameters():
            if keep:
                parameter.data = weights[name].to(parameter.device)
            parameter.grad = None
        self.method.module = self.module


def client_optimizer(module: nn.Module, cfg, section) -> torch.optim.Optimizer:
    """hypergen's optimizer for the engine: AdamW or 8-bit Adam; with ZeRO-Offload DeepSpeed's CPU Adam (AdamW: the
    recipe refuses offload with 8-bit Adam)."""
    if section.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        params = [p for p in module.parameters() if p.requires_grad]
        return DeepSpeedCPUAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, adamw_mode=True)
    return make_optimizer(module.parameters(), cfg)


class _TensorsOut(nn.Module):
    """The trained module as the engine holds it: forward returns the tensors of the module's output as a tuple
    (DeepSpeed looks for tensors only in tensors, tuples, lists and dicts); :class:`_EngineCall` rebuilds the
    output from them."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.rebuild: Callable[[list[torch.Tensor]], Any] | None = None

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, ...]:
        tensors: list[torch.Tensor] = []
        self.rebuild = _flatten(self.module(*args, **kwargs), tensors)
        return tuple(tensors)


class _EngineCall:
    """Stands in for the method's module while it computes its loss: calls go through the engine, attributes to
    the module."""

    def __init__(self, engine, visible: _TensorsOut) -> None:
        self._engine, self._visible = engine, visible

    def __call__(self, *args, **kwargs):
        tensors = self._engine(*args, **kwargs)
        return self._visible.rebuild(list(tensors))

    def __getattr__(self, name: str):
        return getattr(self._visible.module, name)


def _flatten(value: Any, tensors: list[torch.Tensor]) -> Callable[[list[torch.Tensor]], Any]:
    """Append ``value``'s tensors to ``tensors``; return a function that rebuilds ``value`` from replacements."""
    if isinstance(value, torch.Tensor):
        index = len(tensors)
        tensors.append(value)
        return lambda new: new[index]
    if isinstance(value, dict):  # dicts, and transformers' ModelOutput (an OrderedDict)
        parts = {k: _flatten(v, tensors) for k, v in value.items()}

        def rebuild_dict(new):
            out = value.copy()
            for k, part in parts.items():
                out[k] = part(new)
            return out

        return rebuild_dict
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [_flatten(v, tensors) for v in value]
        return lambda new: type(value)(part(new) for part in items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _flatten(getattr(value, f.name), tensors) for f in dataclasses.fields(value) if f.init}
        return lambda new: dataclasses.replace(value, **{k: part(new) for k, part in fields.items()})
    return lambda new: value


def _keep_generator_parameters(deepspeed, module: nn.Module) -> None:
    """ZeRO-3 re-gathers a module's own weights for its backward through the tensors its forward returns; a
    generator returns a GeneratedStates dataclass, which DeepSpeed does not look into, so its own parameters (the
    learnable tokens z) would be released after forward and missing in backward. They are registered as external
    parameters: gathered at the generator's forward and kept until the step re-partitions everything."""
    for submodule in module.modules():
        if isinstance(submodule, Generator):
            for parameter in submodule.parameters(recurse=False):
                deepspeed.zero.register_external_parameter(submodule, parameter)
                parameter.is_external_param = True


def _device_type(module: nn.Module) -> str:
    parameter = next(module.parameters(), None)
    return parameter.device.type if parameter is not None else "cpu"
