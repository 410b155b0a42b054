"""Plugins and hybrids: hybrid recipes train, the example plugin (plugins/hypergen-blocks) installs, registers,
trains and fails cleanly once uninstalled, and its components behave as documented."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from hypergen.cli import main
from hypergen.components.generators import AutoregressiveGenerator, additive_mask
from hypergen.models.backbones import main_model_shape
from hypergen.components.projectors import LayerwiseMLPProjector
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.models.hypernet import HyperNetwork
from tests.components.test_components import demos

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "hypergen-blocks"
TINY = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}


@pytest.fixture
def blocks():
    """The plugin's modules, imported from its source folder (not installed)."""
    sys.path.insert(0, str(PLUGIN / "src"))
    try:
        import hypergen_blocks.generators
        import hypergen_blocks.regularizers

        yield hypergen_blocks
    finally:
        sys.path.remove(str(PLUGIN / "src"))


def small(recipe: dict, tmp_path: Path, tiny: dict = TINY) -> dict:
    """``recipe`` with the tiny main model, a small embedded data setup in tmp_path and 3 short steps."""
    recipe = json.loads(json.dumps(recipe))
    recipe["main_model"] = {"tiny": dict(tiny)}
    recipe["data"] = {"source": "embedded", "path": str(tmp_path / "embedded"), "num_positive": 4,
                      "demo_style": "compact", "max_demo_length": 64, "max_input_length": 16,
                      "max_target_length": 8, "queries_per_task": 2, "eval_instances_per_task": 2}
    recipe["peft"] = {"name": "prefix", "length": 2}
    recipe["training"].update({"steps": 3, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0,
                               "log_every": 1, "checkpoint_every": 3, "threads": 1})
    return recipe


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name,consistency", [("tiny_ar_no_consistency", False), ("tiny_nar_consistency", True)])
def test_hybrid_recipes_train(tmp_path, name, consistency):
    recipe = small(json.loads((REPO / "recipes" / f"{name}.json").read_text()), tmp_path)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(out), "--quiet", "--no-eval"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = metrics(out)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    assert all(("local_consistency" in r) == consistency for r in rows)


def test_hybrid_recipes_change_only_their_components():
    base = json.loads((REPO / "recipes" / "tiny_hart.json").read_text())
    for name, generator, regularizers in [("tiny_ar_no_consistency", "autoregressive", []),
                                          ("tiny_nar_consistency", "non_autoregressive",
                                           base["hypernetwork"]["regularizers"])]:
        recipe = json.loads((REPO / "recipes" / f"{name}.json").read_text())
        assert recipe["hypernetwork"]["generator"] == {"name": generator}
        assert recipe["hypernetwork"]["regularizers"] == regularizers
        assert recipe["description"] != base["description"]
        rest = lambda r: {k: v for k, v in r.items() if k != "description"} | {
            "hypernetwork": {k: v for k, v in r["hypernetwork"].items() if k not in ("generator", "regularizers")}}
        assert rest(recipe) == rest(base)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_example_plugin_installs_registers_and_trains(tmp_path):
    pytest.importorskip("setuptools")  # built without isolation: nothing is downloaded
    # build from a copy, so that the build leaves no egg-info or build/ folder in the repository
    source = tmp_path / "hypergen-blocks"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    recipe = small(json.loads((REPO / "recipes" / "tiny_hart.json").read_text()), tmp_path,
                   tiny={**TINY, "num_layers": 3})  # L = 3: two blocks of 2, the last one cut to one layer
    recipe["hypernetwork"]["generator"] = {"name": "blockwise", "block_size": 2}
    recipe["hypernetwork"]["regularizers"] = [{"name": "ema_consistency", "alpha": 1.0, "decay": 0.9}]
    path = tmp_path / "blocks.json"
    path.write_text(json.dumps(recipe))
    install = _run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source),
                   cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    try:
        listed = _run("-m", "hypergen.cli", "registry", "list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "blockwise.v1" in listed.stdout and "ema_consistency.v1" in listed.stdout
        assert "hypergen_blocks.generators" in listed.stdout
        trained = _run("-m", "hypergen.cli", "train", str(path), "-o", str(tmp_path / "run"), "--quiet", "--no-eval",
                       cwd=tmp_path)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        rows = metrics(tmp_path / "run")
        assert len(rows) == 3 and all(math.isfinite(r["loss"]) and math.isfinite(r["ema_consistency"]) for r in rows)
        assert rows[0]["ema_consistency"] == 0.0
    finally:
        removed = _run("-m", "pip", "uninstall", "-y", "-q", "hypergen-blocks", cwd=tmp_path)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    missing = _run("-m", "hypergen.cli", "train", str(path), "-o", str(tmp_path / "again"), "--quiet", "--no-eval",
                   cwd=tmp_path)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "blockwise" in missing.stderr and "known:" in missing.stderr and "plugin" in missing.stderr
    assert "Traceback" not in missing.stderr


# --- the plugin's components, imported from its source folder ---------------------------------------------------


def build(tiny_main, generator, k=2):
    target = PrefixTarget(length=2)
    torch.manual_seed(1)
    hypernet = HyperNetwork(tiny_main, generator, LayerwiseMLPProjector(), target.slot_groups(tiny_main), k)
    hypernet.eval()
    return hypernet




def test_blockwise_with_blocks_of_one_is_hart(tiny_main, blocks):
    hart = build(tiny_main, AutoregressiveGenerator())
    blockwise = build(tiny_main, blocks.generators.BlockwiseGenerator(block_size=1))
    with torch.no_grad():
        blockwise.generator.z.copy_(hart.generator.z)
    ids, mask = demos()
    a, b = hart(ids, mask).generated, blockwise(ids, mask).generated
    torch.testing.assert_close(b.states, a.states, rtol=0, atol=0)
    assert b.rows == a.rows and blockwise.generator.rows_per_layer == 1


def test_blockwise_blocks_of_two(tiny_main, blocks):
    # tiny_main: 3 encoder and 2 decoder layers, so L = 3 and two steps of 2 layers (the last token pair dropped)
    hypernet = build(tiny_main, blocks.generators.BlockwiseGenerator(block_size=2))
    generator = hypernet.generator
    assert generator.z.shape == (4, 32) and generator.rows_per_layer == 1
    ids, mask = demos()
    out = hypernet(ids, mask)
    states = out.generated.states
    assert states.shape == (2, 2 * 3, 32)
    assert out.generated.rows == {"encoder": [[0], [2], [4]], "decoder": [[1], [3]]}
    assert out.params["encoder.key"].shape[:3] == (2, 3, 2) and out.params["decoder.value"].shape[:3] == (2, 2, 2)
    # reference without cache: step 1 decodes z; step 2 decodes [z, h_1] with a block-causal mask (blocks of 4)
    with torch.no_grad():
        e = hypernet.backbone.encode(ids, mask)
        z = generator.z.expand(2, -1, -1)
        h1, _ = hypernet.backbone.decode(z, e)
        block_of = torch.arange(8) // 4
        causal = additive_mask(block_of[None, :] <= block_of[:, None], z.dtype)[None, None]
        h2, _ = hypernet.backbone.decode(torch.cat([z, h1], 1), e, self_mask=causal)
    torch.testing.assert_close(states[:, :4], h1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[:, 4:], h2[:, 4:6], atol=1e-5, rtol=1e-5)
    # the layers of one block come from one step: a 2-layer main model needs a single step
    shorter = type(main_model_shape(tiny_main)).of(encoder=2, decoder=2)
    with torch.no_grad():
        one_step = generator(hypernet.backbone, e, shorter).states
    torch.testing.assert_close(one_step, h1, atol=1e-5, rtol=1e-5)


def test_blockwise_rejects_a_bad_block_size(blocks):
    from hypergen.errors import RecipeError

    with pytest.raises(RecipeError, match="block_size"):
        blocks.generators.BlockwiseGenerator(block_size=0)


def test_ema_consistency(blocks):
    EMAConsistency = blocks.regularizers.EMAConsistency
    torch.manual_seed(0)
    history = [torch.randn(2, 6, 4) for _ in range(4)]
    reg = EMAConsistency(decay=0.8)
    first = history[0].clone().requires_grad_(True)
    assert reg.loss(first, 1).item() == 0.0
    ema = history[0].clone()
    for step, states in enumerate(history[1:3], start=2):
        states = states.clone().requires_grad_(True)
        value = reg.loss(states, step)
        torch.testing.assert_close(value, F.mse_loss(states, ema))
        value.backward()  # the EMA is detached: the gradient is that of MSE against a constant
        torch.testing.assert_close(states.grad, 2 * (states.detach() - ema) / states.numel())
        ema = 0.8 * ema + 0.2 * states.detach()
    # checkpoint round trip: a fresh regularizer loaded from the state gives the same next loss
    restored = EMAConsistency(decay=0.8)
    restored.load_state_dict({k: v.clone() for k, v in reg.state_dict().items()})
    expected = reg.loss(history[3], 4)
    torch.testing.assert_close(restored.loss(history[3], 4), expected)
    torch.testing.assert_close(expected, F.mse_loss(history[3], ema))
    assert EMAConsistency().state_dict() == {}


def test_ema_consistency_pairs_the_rows_present_on_both_sides(blocks):
    reg = blocks.regularizers.EMAConsistency(decay=0.5)
    a, b, c = torch.zeros(3, 2, 2), torch.ones(2, 2, 2), torch.full((4, 2, 2), 2.0)
    reg.loss(a, 1)
    torch.testing.assert_close(reg.loss(b, 2), torch.tensor(1.0))  # 2 rows compared, the third keeps its average
    assert reg.ema.shape == (3, 2, 2)
    torch.testing.assert_close(reg.ema[:, 0, 0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(reg.loss(c, 3), F.mse_loss(c[:3], torch.tensor([0.5, 0.5, 0.0])[:, None, None]
                                                          .expand(3, 2, 2)))
    assert reg.ema.shape == (4, 2, 2)  # the new fourth row starts its average
    assert reg.loss(torch.zeros(4, 3, 2), 4).item() == 0.0  # another per-task shape restarts the average


def test_ema_consistency_checks_its_parameters(blocks):
    from hypergen.errors import RecipeError

    with pytest.raises(RecipeError, match="decay"):
        blocks.regularizers.EMAConsistency(decay=1.0)
    with pytest.raises(RecipeError, match="alpha"):
        blocks.regularizers.EMAConsistency(alpha=-1.0)
