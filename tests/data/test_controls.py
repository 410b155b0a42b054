"""The demos controls of ``hypergen eval --control other|random|none``: what each one gives the generator (and the
main model, where it reads the demos too), the scores folders, and an all-empty demos batch without NaN."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import ByT5Tokenizer

from hypergen.cli import main
from hypergen.components.base import SlotGroup
from hypergen.components.generators import (AutoregressiveGenerator, LearnedStatesGenerator,
                                            NonAutoregressiveGenerator)
from hypergen.components.projectors import LayerwiseMLPProjector
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.data.collate import Collator
from hypergen.data.controls import DemoControl
from hypergen.data.tasks import Example, Task
from hypergen.pretrained.model_card import evaluation_of_run
from hypergen.models.adapted import adapted_forward
from hypergen.models.hypernet import HyperNetwork
from hypergen.recipe import Data
from tests.models.test_causal import causal_model
from tests.training.test_training import embedded_recipe, train

TASKS = [Task("a", "Append x.", [Example("ab", ("abx",)), Example("c", ("cx",))], [Example("q", ("qx",))], "test"),
         Task("b", "Reverse.", [Example("xyz", ("zyx",))], [Example("pq", ("qp",))], "test")]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def collator(control: str | None = None, seed: int = 0) -> Collator:
    tokenizer = ByT5Tokenizer()
    data = Data(source="embedded", demo_style="compact", max_demo_length=64, max_input_length=16)
    return Collator(tokenizer, data, control=DemoControl(control, tokenizer, seed) if control else None)


def test_random_demos_keep_length_padding_and_specials_and_are_seeded():
    real, fake = collator()(list(zip(TASKS, [t.instances for t in TASKS]))), collator("random")(
        list(zip(TASKS, [t.instances for t in TASKS])))
    assert fake.demo_ids.shape == real.demo_ids.shape and torch.equal(fake.demo_mask, real.demo_mask)
    special = set(ByT5Tokenizer().all_special_ids)
    tokens = real.demo_mask.bool() & ~torch.isin(real.demo_ids, torch.tensor(sorted(special)))
    assert torch.equal(fake.demo_ids[~tokens], real.demo_ids[~tokens])  # EOS and padding where they were
    assert (fake.demo_ids[tokens] != real.demo_ids[tokens]).float().mean() > 0.9
    assert not torch.isin(fake.demo_ids[tokens], torch.tensor(sorted(special))).any()  # ordinary ids only
    again = collator("random")(list(zip(TASKS, [t.instances for t in TASKS])))
    other_seed = collator("random", seed=1)(list(zip(TASKS, [t.instances for t in TASKS])))
    assert torch.equal(again.demo_ids, fake.demo_ids) and not torch.equal(other_seed.demo_ids, fake.demo_ids)
    # the main model's input (FT-Few-Shot): same length, the query untouched, the demos part random
    real_in = collator()([(TASKS[0], TASKS[0].instances)], demos_in_input=True)
    fake_in = collator("random")([(TASKS[0], TASKS[0].instances)], demos_in_input=True)
    assert fake_in.input_ids.shape == real_in.input_ids.shape
    query = collator()([(TASKS[0], TASKS[0].instances)]).input_ids[0]
    assert torch.equal(fake_in.input_ids[0, -len(query):], query)
    assert not torch.equal(fake_in.input_ids[0, : -len(query)], real_in.input_ids[0, : -len(query)])


def test_no_demos_is_an_empty_demos_batch_and_the_query_alone():
    batch = collator("none")(list(zip(TASKS, [t.instances for t in TASKS])), demos_in_input=True)
    assert batch.demo_ids.shape == (2, 1) and batch.demo_mask.sum() == 0
    alone = collator()(list(zip(TASKS, [t.instances for t in TASKS])))
    assert torch.equal(batch.input_ids, alone.input_ids) and torch.equal(batch.attention_mask, alone.attention_mask)


@pytest.mark.parametrize("generator", [NonAutoregressiveGenerator(), AutoregressiveGenerator(),
                                       AutoregressiveGenerator(use_cache=False), AutoregressiveGenerator(reverse=True),
                                       LearnedStatesGenerator()], ids=["nar", "ar", "ar-nocache", "reverse", "static"])
@pytest.mark.parametrize("fusion", [True, False])
def test_an_all_empty_demos_batch_gives_finite_parameters_and_loss(tiny_main, generator, fusion):
    if fusion and not generator.reads_demos:
        pytest.skip("a generator that reads no demos has nothing to fuse (refused by the recipe)")
    target = PrefixTarget(2)
    target.prepare(tiny_main)
    net = HyperNetwork(tiny_main, generator, LayerwiseMLPProjector(), target.slot_groups(tiny_main), 1).eval()
    empty = torch.zeros(2, 1, dtype=torch.long)
    params = net(empty, empty)
    assert all(torch.isfinite(p).all() for p in params.params.values())
    ids = torch.randint(3, 200, (2, 5))
    loss = adapted_forward(tiny_main, target, params, ids, torch.ones_like(ids), ids, fusion).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("generator", [NonAutoregressiveGenerator(), AutoregressiveGenerator()], ids=["nar", "ar"])
def test_an_all_empty_demos_batch_is_finite_on_a_causal_backbone(generator):
    model = causal_model()
    net = HyperNetwork(model, generator, LayerwiseMLPProjector(), [SlotGroup("layers.q_proj.A", "layers", 3, 2, 32)],
                       2).eval()
    empty = torch.zeros(2, 1, dtype=torch.long)
    assert torch.isfinite(net(empty, empty).params["layers.q_proj.A"]).all()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    recipe = embedded_recipe(root, steps=1)
    recipe["hypernetwork"]["regularizers"] = []
    recipe["evaluation"] = {"max_new_tokens": 3}
    recipe["training"]["checkpoint_every"] = None
    return train(root, recipe, root / "run")


def test_each_control_changes_what_the_hypernetwork_reads_and_writes_its_scores(run, monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}
    forward = HyperNetwork.forward

    def spy(self, demo_ids, demo_mask, output_attentions=False):
        seen.setdefault(key, []).append(demo_ids[demo_mask.bool()].clone())  # each task's real demos tokens
        return forward(self, demo_ids, demo_mask, output_attentions)

    monkeypatch.setattr(HyperNetwork, "forward", spy)
    for key, args in (("own", []), ("other", ["--control", "other"]), ("alias", ["--other-demos"]),
                      ("random", ["--control", "random"]), ("none", ["--control", "none"])):
        result = invoke("eval", "--run", run, "--quiet", *args)
        assert result.exit_code == 0, result.output
    own, n = seen["own"], len(seen["own"])
    assert n >= 2 and [len(x) for x in seen["none"]] == [0] * n  # no demos tokens at all
    assert all(torch.equal(a, b) for a, b in zip(seen["other"], own[1:] + own[:1]))  # the next task's demos
    assert all(torch.equal(a, b) for a, b in zip(seen["alias"], seen["other"]))
    assert [len(x) for x in seen["random"]] == [len(x) for x in own]  # same lengths, other tokens
    assert all(not torch.equal(a, b) for a, b in zip(seen["random"], own))
    for name in ("other", "random", "none"):
        scores = json.loads((run / f"eval-control-{name}" / "scores.json").read_text())
        assert scores["overall"]["instances"] == json.loads((run / "eval" / "scores.json").read_text())[
            "overall"]["instances"]
    assert not (run / "eval-other-demos").exists()  # --other-demos writes the named control's folder now
    card = evaluation_of_run(run)
    other = json.loads((run / "eval-control-other" / "scores.json").read_text())["overall"]
    assert card["other_demos"] == other


@pytest.mark.parametrize("args, message", [(["--control", "bogus"], "--control: 'bogus' is not a demos control"),
                                           (["--control", "random", "--other-demos"], "--other-demos is --control")])
def test_a_bad_control_is_one_line_and_exit_2(run, args, message):
    result = invoke("eval", "--run", run, *args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
