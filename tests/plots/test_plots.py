"""`hypergen plot loss` / `hypergen plot attention` on tiny HyperTuning and HART runs, and the variance function."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from hypergen.cli import main
from hypergen.plots import loss_variance

from tests.training.test_training import embedded_recipe, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny HyperTuning run (2+2 layers, p=2: 4 rows) and a tiny HART run (3 encoder + 2 decoder layers: 6 rows),
    10 steps each, logged every step."""
    tmp = tmp_path_factory.mktemp("plots")
    nar = embedded_recipe(tmp, steps=10)
    nar["hypernetwork"] = {"decoder_layers": 1, "generator": {"name": "non_autoregressive"}, "regularizers": []}
    ar = embedded_recipe(tmp, steps=10)
    ar["main_model"]["tiny"]["num_layers"] = 3
    ar["hypernetwork"]["generator"] = {"name": "autoregressive"}
    for recipe in (nar, ar):
        recipe["training"]["checkpoint_every"] = 10  # no checkpoint but the final weights
    return {"nar": train(tmp, nar, tmp / "ht"), "ar": train(tmp, ar, tmp / "hart"), "tmp": tmp}


def invoke(*args):
    return CliRunner().invoke(main, ["plot", *args])


def test_loss_variance_by_hand():
    steps = [1, 2, 3, 4, 5, 6, 7, 8]
    losses = [9.0, 9.0, 9.0, 9.0, 1.0, 3.0, 2.0, 6.0]  # second half: steps > 4 -> 1, 3, 2, 6
    # windows of 2: var(1,3) = 1, var(3,2) = 0.25, var(2,6) = 4 -> mean 1.75
    assert loss_variance(steps, losses, 2) == pytest.approx(1.75)
    # a skipped step (None / NaN) is left out: the windows run over 1, 3, 6
    assert loss_variance(steps, [9, 9, 9, 9, 1, 3, None, 6], 2) == pytest.approx((1 + 2.25) / 2)
    assert loss_variance(steps, [9, 9, 9, 9, 1, 3, math.nan, 6], 2) == pytest.approx((1 + 2.25) / 2)
    # window larger than the tail: one window of all 4 points
    assert loss_variance(steps, losses, 10) == pytest.approx(np.var([1.0, 3.0, 2.0, 6.0]))
    assert loss_variance([1, 2], [1.0, 2.0], 3) is None  # one point in the second half
    assert loss_variance(list(reversed(steps)), list(reversed(losses)), 2) == pytest.approx(1.75)  # order-free


def test_plot_loss_png_and_summary(runs):
    out = runs["tmp"] / "out" / "loss.png"
    result = invoke("loss", "--run", str(runs["nar"]), "--run", str(runs["ar"]), "--label", "HT", "--out", str(out),
                    "--window", "3")
    assert result.exit_code == 0, result.output
    assert "HT:" in result.output and "hart:" in result.output and "variance" in result.output
    data = out.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["HT", "hart"]
    for record, run in zip(summary["runs"], (runs["nar"], runs["ar"])):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steps = np.array([x["step"] for x in lines])
        values = np.array([x["loss"] for x in lines], dtype=float)
        tail = values[steps > steps.max() / 2]
        expected = np.lib.stride_tricks.sliding_window_view(tail, 3).var(axis=1).mean()
        assert record["points"] == 10 and record["variance_points"] == 5
        assert record["variance"] == pytest.approx(expected, rel=1e-12)
    # the default --out, another metric, and no temporary files left behind
    result = invoke("loss", "--run", str(runs["ar"]), "--metric", "local_consistency")
    assert result.exit_code == 0, result.output
    assert (runs["ar"] / "plots" / "local_consistency.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (runs["ar"] / "plots").iterdir()) == ["local_consistency.json",
                                                                        "local_consistency.png"]


def test_plot_attention_matrices(runs):
    result = invoke("attention", "--run", str(runs["nar"]), "--tasks", "3")
    assert result.exit_code == 0, result.output
    png = runs["nar"] / "plots" / "attention.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    nar = json.loads(png.with_suffix(".json").read_text())
    out = runs["tmp"] / "att" / "hart.png"
    result = invoke("attention", "--run", str(runs["ar"]), "--tasks", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG_MAGIC)
    ar = json.loads(out.with_suffix(".json").read_text())

    for summary, rows in ((nar, 4), (ar, 6)):  # HyperTuning: 2p = 4 rows; HART: 2 x max(3, 2) layers = 6 rows
        matrix = np.array(summary["matrix"])
        assert matrix.shape == (rows, rows) and summary["size"] == rows and len(summary["tasks"]) == 3
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.array(summary["blocks"]["matrix"]).sum(axis=1), 1.0, atol=1e-5)
    assert not nar["autoregressive"] and nar["blocks"]["kind"] == "side"
    assert nar["row_labels"] == ["E0", "E1", "D0", "D1"]
    assert np.triu(np.array(nar["matrix"]), 1).max() > 1e-3  # bi-directional: rows attend to later rows
    assert ar["autoregressive"] and ar["blocks"]["kind"] == "layer" and ar["blocks"]["labels"] == ["L0", "L1", "L2"]
    assert ar["row_labels"] == ["enc0", "dec0", "enc1", "dec1", "enc2", "-"]
    full = np.array(ar["matrix"])
    step = np.arange(6) // 2  # row i is produced at decoding step i // 2 and sees only steps <= its own
    assert np.abs(full[step[None, :] > step[:, None]]).max() < 1e-6
    assert np.abs(np.triu(np.array(ar["blocks"]["matrix"]), 1)).max() < 1e-6  # per layer: lower-triangular
    assert full[0, 1] > 1e-3  # the two rows of one step see each other


def test_plot_errors_name_the_run(runs, tmp_path):
    missing = tmp_path / "nope"
    for args in (["loss", "--run", str(missing)], ["attention", "--run", str(missing)]):
        result = invoke(*args)
        assert result.exit_code == 2 and str(missing) in result.output
        assert len(result.output.strip().splitlines()) == 1
    finetune = tmp_path / "ft"
    finetune.mkdir()
    recipe = embedded_recipe(tmp_path)
    recipe.pop("hypernetwork")
    recipe.pop("peft")
    (finetune / "recipe.json").write_text(json.dumps({"kind": "finetune", **recipe}))
    result = invoke("attention", "--run", str(finetune))
    assert result.exit_code == 2 and str(finetune) in result.output and "finetune" in result.output
    result = invoke("loss", "--run", str(finetune))  # no metrics.jsonl
    assert result.exit_code == 2 and str(finetune) in result.output and "metrics.jsonl" in result.output
    result = invoke("loss", "--run", str(runs["nar"]), "--metric", "nope", "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "nope" in result.output and not (tmp_path / "x.png").exists()
