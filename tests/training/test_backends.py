"""The training layer's seams: the Method and Backend protocols and the backend choice, the recipe's DeepSpeed rules,
the one metrics.jsonl reader/writer, regularizer metric names, and decoder recomputation as an explicit flag."""

from __future__ import annotations

import json

import pytest
import torch

from hypergen.components.base import Regularizer
from hypergen.components.generators import AutoregressiveGenerator, NonAutoregressiveGenerator
from hypergen.components.regularizers import LocalConsistency
from hypergen.data.collate import Collator
from hypergen.data.tasks import Example, Task
from hypergen.errors import RecipeError
from hypergen.recipe import Data, Evaluation, Training, parse_recipe
from hypergen.training import distributed
from hypergen.training.activation_recompute import enable_gradient_checkpointing
from hypergen.training.backends import make_backend
from hypergen.training.backends.base import Backend, Method
from hypergen.training.backends.deepspeed import DeepSpeedBackend
from hypergen.training.backends.torch import TorchBackend
from hypergen.training.distributed import SINGLE
from hypergen.training.methods import FinetuneMethod, HypernetMethod, regularizer_keys
from hypergen.training.metrics_log import append_metrics, read_metrics, truncate_metrics

from tests.components.test_components import build, demos


def protocol_members(protocol) -> set[str]:
    """The attributes and methods a protocol class declares."""
    methods = {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    return methods | set(protocol.__annotations__)


def a_batch():
    from transformers import ByT5Tokenizer

    task = Task("t", "Add x.", [Example("a", ("ax",)), Example("b", ("bx",))],
                [Example("c", ("cx",)), Example("d", ("dx",))], "mem")
    data = Data(source="embedded", max_demo_length=64, max_input_length=16, max_target_length=8)
    return Collator(ByT5Tokenizer(), data)([(task, task.instances)])


def test_both_methods_and_backends_meet_the_protocols(tiny_main):
    hypernet, target = build(tiny_main, AutoregressiveGenerator())
    hyper_method = HypernetMethod(tiny_main, hypernet, target, [], fusion=True, eval_cfg=Evaluation())
    assert isinstance(hyper_method, Method)
    assert isinstance(FinetuneMethod(tiny_main, few_shot=False, eval_cfg=Evaluation()), Method)
    cfg = Training(steps=4, batch_size=2, micro_batch_size=2, optimizer="adamw")
    ddp = parse_recipe({"main_model": {"tiny": {}}, "data": {"source": "embedded"},
                        "distributed": {"backend": "ddp"}}).distributed
    for section in (None, ddp):
        backend = make_backend(hyper_method, cfg, section, SINGLE, accumulation=1)
        assert type(backend) is TorchBackend and isinstance(backend, Backend)
    assert protocol_members(Backend) <= set(dir(DeepSpeedBackend))  # built only with DeepSpeed installed
    assert {"forward", "backward", "step", "full_weights", "load", "finish"} <= protocol_members(Backend)


@pytest.mark.parametrize("kind", ["hypernetwork", "finetune"])
def test_the_recipe_refuses_offloading_8bit_adam(kind):
    data = {"kind": kind, "main_model": {"tiny": {}}, "data": {"source": "embedded"},
            "training": {"optimizer": "adam8bit"},
            "distributed": {"backend": "deepspeed", "zero_stage": 2, "offload_optimizer": True}}
    with pytest.raises(RecipeError, match=r"^r\.json: .*distributed\.offload_optimizer: .*'adam8bit'"):
        parse_recipe(data, "r.json")
    data["training"]["optimizer"] = "adamw"
    assert parse_recipe(data, "r.json").distributed.offload_optimizer


def test_a_deepspeed_recipe_without_deepspeed_fails_before_anything_loads(monkeypatch):
    section = parse_recipe({"main_model": {"tiny": {}}, "data": {"source": "embedded"},
                            "distributed": {"backend": "deepspeed", "zero_stage": 1}}).distributed
    real = distributed.importlib.util.find_spec
    monkeypatch.setattr(distributed.importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(RecipeError, match="r.json: distributed.backend 'deepspeed': DeepSpeed is not installed"):
        distributed.setup(section, "r.json")
    assert not torch.distributed.is_initialized()


def test_metrics_log_appends_reads_and_truncates(tmp_path):
    assert read_metrics(tmp_path) == []
    records = [{"step": s, "loss": 1.0 / s, "local_consistency": float("nan"), "lr": 5e-5} for s in (1, 2, 3)]
    for record in records:
        append_metrics(tmp_path, record)
    path = tmp_path / "metrics.jsonl"
    written = path.read_text()
    assert written.splitlines() == [json.dumps(r) for r in records]
    with open(path, "a") as handle:
        handle.write('{"step": 4, "loss": 0.2')  # what a kill while writing leaves
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    truncate_metrics(tmp_path, 2)  # a resume from step 2's checkpoint
    assert path.read_text() == "".join(line + "\n" for line in written.splitlines()[:2])  # byte for byte
    truncate_metrics(tmp_path / "nothing-here", 0)
    assert not (tmp_path / "nothing-here").exists()


def test_regularizer_terms_are_logged_under_their_registered_names(tiny_main):
    class Unregistered(Regularizer):
        def loss(self, states, step):
            return states.square().mean()

    named_loss = type("loss", (Unregistered,), {})  # would overwrite the prediction loss's key
    assert regularizer_keys([LocalConsistency(), Unregistered(), LocalConsistency(), named_loss()]) == [
        "local_consistency", "Unregistered", "local_consistency_2", "loss_2"]
    hypernet, target = build(tiny_main, AutoregressiveGenerator())
    method = HypernetMethod(tiny_main, hypernet, target, [LocalConsistency(), LocalConsistency(alpha=2.0)],
                            fusion=True, eval_cfg=Evaluation())
    _, parts = method.loss(a_batch(), 0)
    assert set(parts) == {"loss", "local_consistency", "local_consistency_2"}


@pytest.mark.parametrize("generator,recomputed", [
    (NonAutoregressiveGenerator(), 1),                     # one pass: every block call recomputed
    (AutoregressiveGenerator(use_cache=False), 3),         # one pass per step (L = 3), no cache
    (AutoregressiveGenerator(), 0),                        # a KV cache is written in place: never recomputed
])
def test_decoder_recomputation_is_the_hypernetworks_flag(tiny_main, monkeypatch, generator, recomputed):
    k = 2
    hypernet, target = build(tiny_main, generator, k=k)
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)

    def states_and_grads():
        hypernet.zero_grad()
        states = hypernet(*demos()).generated.states
        states.square().sum().backward()
        return states.detach(), {n: p.grad.clone() for n, p in hypernet.named_parameters() if p.grad is not None}

    plain_states, plain_grads = states_and_grads()
    assert not calls and not hypernet.checkpoint_decoder
    method = HypernetMethod(tiny_main, hypernet, target, [], fusion=True, eval_cfg=Evaluation())
    assert enable_gradient_checkpointing(method, hypernetwork=True, main_model=False) == ["hypernetwork"]
    assert hypernet.checkpoint_decoder
    states, grads = states_and_grads()
    assert len(calls) == recomputed * k
    torch.testing.assert_close(states, plain_states)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)
