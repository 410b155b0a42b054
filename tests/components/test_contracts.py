"""The component contracts (a Generator's rows_per_layer and autoregressive; the targets' temporaries' prefix) and
``--code FILE.py``, a file that registers components before a recipe is read (the guide's own example generator,
docs/extending.md, is the one registered here)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hypergen.cli import main
from hypergen.components.base import TEMPORARY_ATTRIBUTE_PREFIX, Generator, MainModelShape
from hypergen.components.generators import NonAutoregressiveGenerator
from hypergen.components.targets.lora import LoraTarget
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.errors import RecipeError
from tests.test_plugins import small

REPO = Path(__file__).resolve().parents[2]


def guide_generator() -> str:
    """The first python block of docs/extending.md's "Write your own generator" section (registers mean_of_demos.v1)."""
    section = (REPO / "docs" / "extending.md").read_text().split("## Write your own generator", 1)[1]
    return re.search(r"```python[^\n]*\n(.*?)```", section, re.S).group(1)


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def recipe(tmp_path) -> Path:
    """tiny_hart.json, small, naming the guide's generator."""
    data = small(json.loads((REPO / "recipes" / "tiny_hart.json").read_text()), tmp_path)
    data["hypernetwork"]["generator"] = {"name": "mean_of_demos", "init_std": 0.5}
    path = tmp_path / "mean_recipe.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def code(tmp_path) -> Path:
    path = tmp_path / "my_generators.py"
    path.write_text(guide_generator())
    return path


class NoRows(Generator):
    autoregressive = False

    def build(self, d_model, shape, prefix_rows):
        pass

    def forward(self, decoder, encoder_states, encoder_mask, shape, output_attentions=False):
        raise NotImplementedError


def test_a_generator_that_does_not_declare_rows_per_layer_is_refused_by_name():
    with pytest.raises(TypeError, match=r"generator .*NoRows does not declare rows_per_layer"):
        NoRows()


def test_rows_per_layer_is_checked_once_built():
    generator = NonAutoregressiveGenerator()
    with pytest.raises(RecipeError, match=r"NonAutoregressiveGenerator\.rows_per_layer must be an integer >= 1.*0"):
        generator.check_contract()  # p is 0 until build
    generator.build(32, MainModelShape.of(encoder=1, decoder=1), prefix_rows=3)  # T5-shaped: 2 groups
    generator.check_contract()
    assert generator.rows_per_layer == 3 and generator.z.shape == (6, 32) and generator.autoregressive is False


def test_registry_list_with_code_lists_the_file_s_generator(code):
    result = cli("registry", "list", "--code", code)
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "mean_of_demos.v1" in row)
    assert line.split() == ["generators", "mean_of_demos.v1", "hypergen_code_my_generators"]
    assert "autoregressive.v1" in result.output  # the built-ins are still there


def test_recipes_validate_with_code_accepts_a_recipe_naming_it(code, recipe, tmp_path):
    other = tmp_path / "unregistered.json"  # a name nothing registers: refused, naming the field
    other.write_text(recipe.read_text().replace("mean_of_demos", "never_registered"))
    assert "hypernetwork.generator.name: unknown generator 'never_registered'" in one_error_line(
        cli("recipes", "validate", other))
    result = cli("recipes", "validate", "--code", code, recipe)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{recipe}: ok (hypernetwork)"


def test_recipes_validate_names_a_file_s_generator_that_breaks_the_contract(tmp_path, recipe):
    broken = tmp_path / "no_rows.py"
    broken.write_text(guide_generator().replace("    rows_per_layer = 1", "    # rows_per_layer left out"))
    line = one_error_line(cli("recipes", "validate", "--code", broken, recipe))
    assert "hypernetwork.generator" in line and "generator MeanOfDemos does not declare rows_per_layer" in line


def test_train_with_code_trains_two_steps(code, recipe, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--code", code, recipe, "-o", out, "--quiet", "--no-eval",
                 "--set", "training.steps=2", "--set", "training.checkpoint_every=2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert json.loads((out / "recipe.json").read_text())["hypernetwork"]["generator"]["name"] == "mean_of_demos"


@pytest.mark.parametrize("command", [["train"], ["finetune"], ["recipes", "validate"], ["registry", "list"]])
def test_a_missing_code_file_is_one_line_naming_it(command, tmp_path, recipe):
    missing = tmp_path / "nowhere.py"
    args = [*command, "--code", missing] + ([] if command == ["registry", "list"] else [recipe])
    line = one_error_line(cli(*args))
    assert f"--code: {missing} does not exist" in line
    assert not (tmp_path / "run").exists()


def test_a_code_file_that_raises_is_one_line_naming_it_and_the_error(tmp_path, recipe):
    failing = tmp_path / "failing.py"
    failing.write_text("import math\n\nVALUE = 1 / 0\n")
    line = one_error_line(cli("train", "--code", failing, recipe, "-o", tmp_path / "run", "--quiet"))
    assert f"--code: importing {failing} failed: ZeroDivisionError: division by zero" in line
    assert not (tmp_path / "run").exists()
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def broken(:\n")
    assert f"importing {syntax} failed: SyntaxError" in one_error_line(cli("registry", "list", "--code", syntax))


@pytest.mark.parametrize("make_target", [lambda: PrefixTarget(length=2), lambda: LoraTarget(rank=2)])
def test_targets_name_every_temporary_with_the_declared_prefix(tiny_main, make_target):
    """Gradient checkpointing of the main model restores exactly the attributes with this prefix."""
    def attributes() -> set[tuple[str, str]]:
        return {(path, name) for path, module in tiny_main.named_modules() for name in vars(module)}

    before = attributes()
    target = make_target()
    target.prepare(tiny_main)
    params = {g.name: torch.randn(3, g.num_layers, g.rows, g.width) for g in target.slot_groups(tiny_main)}
    with target.applied(tiny_main, params):
        added = attributes() - before
    assert added, "the target set no temporaries"
    assert {name for _, name in added if not name.startswith(TEMPORARY_ATTRIBUTE_PREFIX)} == set()
