"""`hypergen bench` runs on the tiny size and writes a well-formed result (timings are not asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hypergen.cli import main


def test_bench_tiny_writes_result(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", "--size", "tiny", "--tasks", "2", "--steps", "2", "--depths", "6,12",
                                       "--threads", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "headline" in result.output
    data = json.loads((out / "bench.json").read_text())
    for key in ("machine", "main_model", "lengths", "hypernetworks", "finetuning", "ratios", "headline",
                "memory_method", "wall_s"):
        assert key in data, key
    assert set(data["hypernetworks"]) == {"HART", "HyperTuning"}
    assert set(data["finetuning"]) == {"lora", "prefix"}
    for entry in data["hypernetworks"].values():
        assert entry["latency"]["median_s"] > 0 and entry["latency"]["n"] == 2
        assert entry["throughput"]["examples_per_s"] > 0
        assert entry["peak_memory_mib"] is not None and entry["peak_memory_mib"] >= 0
    for entry in data["finetuning"].values():
        assert entry["step"]["median_s"] > 0 and entry["s_steps"]["median_s"] > 0
        assert entry["trainable_parameters"] > 0
    assert all(v > 0 for v in data["ratios"].values()) and data["headline"]["ratio"] > 0
    scaling = data["hypernetworks"]["HART"]["depth_scaling"]
    assert scaling["cached"]["depths"] == [6, 12] and all(t > 0 for t in scaling["cached"]["seconds"])
    assert isinstance(scaling["cached"]["fit"]["exponent"], float)
    assert (out / "bench.png").stat().st_size > 1000


def test_bench_refuses_run_and_size(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--run", str(tmp_path), "--size", "tiny"])
    assert result.exit_code == 2
    assert "not both" in result.output
