"""Every code block of the guide (``docs/*.md``) and of the README that a user would run, run.

* ``python`` blocks are executed in order, one namespace per page, in a temporary folder (the workspace);
* ``bash`` blocks run in the same folder, every training command (train, finetune, pretrain, sweep) shortened to
  two steps and one evaluation instance per task (``SHORTEN``): the commands are the guide's, only their length
  is not. A block of ``hypergen`` lines alone runs them in this process through click (the same command objects,
  without a Python start-up per line); any other block runs in ``bash -euo pipefail`` with ``hypergen`` the
  checkout's CLI, shortened the same way;
* a block with ``title="FILE"`` (any language) is written to FILE in the workspace instead (a recipe, a plugin
  module) for the blocks after it to use;
* a block whose first line is ``# needs: gpu``, ``# needs: network`` or ``# needs: long`` is skipped and counted:
  the page says why on that line. Blocks of other languages (``text``, ``json``, ``toml``) are not run.

The workspace starts with what the pages assume a reader has after ``make demo``: the tiny main model
(``runs/demo/main``) and a HART run on it (``runs/demo/hart``), both from the built-in recipes, shortened.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)(?P<attrs>[^\n]*)\n(?P<code>.*?)^(?P=indent)```", re.M | re.S)
NEEDS = re.compile(r"^#\s*needs:\s*(gpu|network|long)\b")
TITLE = re.compile(r'title="([^"]+)"')
RUN = {"python", "bash"}
SHORTEN = ("--quiet --set training.steps=2 --set data.eval_instances_per_task=1 --set training.threads=1 "
           "--set training.log_every=1")
PRELUDE = f"""set -euo pipefail
hypergen() {{
  case "$1" in
    train|finetune|pretrain|sweep) "{sys.executable}" -m hypergen.cli "$@" {SHORTEN} ;;
    *) "{sys.executable}" -m hypergen.cli "$@" ;;
  esac
}}
"""


def blocks(page: Path) -> list[dict]:
    found = []
    for match in FENCE.finditer(page.read_text()):
        code = textwrap.dedent("\n".join(line[len(match["indent"]):] for line in match["code"].splitlines()))
        title = TITLE.search(match["attrs"])
        needs = NEEDS.match(code.lstrip())
        found.append({"lang": match["lang"], "code": code, "title": title[1] if title else None,
                      "needs": needs[1] if needs else None, "line": page.read_text()[:match.start()].count("\n") + 1})
    return found


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def hypergen_lines(code: str) -> list[list[str]] | None:
    """The argument lists of a block made of ``hypergen ...`` lines only (continuations joined, comments
    dropped); None for any other block."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] != "hypergen":
            return None
        commands.append(words[1:])
    return commands


def run_in_process(commands: list[list[str]], where: str) -> None:
    from click.testing import CliRunner

    from hypergen.cli import main

    for args in commands:
        if args and args[0] in ("train", "finetune", "pretrain", "sweep"):
            args = args + shlex.split(SHORTEN)
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"{where}: hypergen {shlex.join(args)} failed ({result.exit_code}):\n" \
                                      f"{result.output[-3000:]}\n{result.exception!r}"


def run_bash(code: str, cwd: Path, where: str) -> None:
    result = subprocess.run(["bash", "-c", PRELUDE + code], cwd=cwd, env=environment(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{where} failed ({result.returncode}):\n{code}\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"


@pytest.fixture(autouse=True)
def torch_threads():
    """A recipe's ``training.threads`` sets torch's thread count in this process; the tests after keep theirs."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder holding what a reader has after ``make demo``, shortened: runs/demo/main and runs/demo/hart."""
    folder = tmp_path_factory.mktemp("guide")
    (folder / "recipes").symlink_to(REPO / "hypergen" / "recipes")  # as in a checkout: recipes/NAME.json
    import torch

    cwd, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(folder)
    try:
        run_in_process([["finetune", "tiny_finetune", "--output", "runs/demo/main"],
                        ["train", "tiny_hart", "--output", "runs/demo/hart"]], "workspace")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return folder


def test_the_guide_has_runnable_blocks_and_every_marker_is_known():
    """The extraction sees the guide's blocks (a broken pattern would make the tests below vacuous), and a
    ``needs:`` line names one of the three known reasons."""
    every = [block for page in PAGES for block in blocks(page)]
    assert sum(block["lang"] in RUN and not block["needs"] for block in every) >= 10
    for page in PAGES:
        for block in blocks(page):
            first = block["code"].lstrip().splitlines()[0] if block["code"].strip() else ""
            if first.replace(" ", "").startswith("#needs"):
                assert block["needs"], f"{page.name}:{block['line']}: unknown marker {first!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_page_code_blocks_run(page, workspace, tmp_path, monkeypatch):
    """Each page in its own copy of the workspace, so that no page depends on another's blocks."""
    workspace = Path(shutil.copytree(workspace, tmp_path / "workspace", symlinks=True))
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(workspace))
    namespace: dict = {"__name__": f"guide_{page.stem}"}
    ran = 0
    for block in blocks(page):
        where = f"{page.relative_to(REPO)}:{block['line']}"
        if block["needs"]:
            continue
        if block["title"]:
            target = workspace / block["title"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block["code"])
        elif block["lang"] == "python":
            exec(compile(block["code"], where, "exec"), namespace)
            ran += 1
        elif block["lang"] == "bash":
            commands = hypergen_lines(block["code"])
            if commands is None:
                run_bash(block["code"], workspace, where)
            else:
                run_in_process(commands, where)
            ran += 1
    if ran == 0:
        pytest.skip(f"{page.name}: no runnable block")
