"""Tests for hypergen.data: S-NI loading, Def+kPos text, task sampling and the synthetic affix tasks."""

import json
from collections import Counter
from pathlib import Path

import pytest

from hypergen.data import (Example, Task, TaskSampler, demos_text, ensure_embedded_tasks, load_task, load_task_folder,
                           query_text, read_split, write_embedded_tasks)
from hypergen.data.synthetic import FAMILIES, apply_rule, family_of, task_rule
from hypergen.errors import TaskFormatError

SNI_ALGO = Path(__file__).resolve().parents[3] / "shared" / "data" / "sni-algo"


@pytest.fixture
def sni_algo() -> Path:
    if not (SNI_ALGO / "tasks").is_dir():
        pytest.skip(f"real S-NI data {SNI_ALGO} not found")
    return SNI_ALGO


# --- real S-NI files -------------------------------------------------------------------------------------------

def test_sni_algo_default_split_loads(sni_algo):
    train, test = load_task_folder(sni_algo, "train"), load_task_folder(sni_algo, "test")
    assert (len(train), len(test)) == (64, 12)
    assert not {t.name for t in train} & {t.name for t in test}
    for task in train + test:
        assert task.definition.strip() and task.instances
        assert all(isinstance(o, str) for ex in task.instances for o in ex.outputs)


def test_sni_algo_variants(sni_algo):
    capital = load_task(sni_algo / "tasks" / "task1087_two_number_sum.json")  # Input/Output keys, string output
    raw = json.loads((sni_algo / "tasks" / "task1087_two_number_sum.json").read_text())["Instances"][0]
    assert capital.instances[0] == Example(raw["Input"], (raw["Output"],))
    string_def = load_task(sni_algo / "tasks" / "task078_all_elements_except_last_i.json")
    raw_def = json.loads(Path(string_def.source).read_text())["Definition"]
    assert isinstance(raw_def, str) and string_def.definition == raw_def.strip()
    list_def = load_task(sni_algo / "tasks" / "task063_first_i_elements.json")
    assert list_def.definition.startswith("In this task") and len(list_def.positives) >= 2


# --- malformed files -------------------------------------------------------------------------------------------

GOOD = {"Definition": ["Do it."], "Instances": [{"input": "a", "output": ["b"]}]}


@pytest.mark.parametrize("content, field", [
    ("{not json", "JSON"),
    ("", "empty"),
    ("[1, 2]", "object"),
    (json.dumps({"Instances": GOOD["Instances"]}), "Definition"),
    (json.dumps({"Definition": [""], "Instances": GOOD["Instances"]}), "Definition"),
    (json.dumps({"Definition": "x", "Instances": []}), "Instances"),
    (json.dumps({"Definition": "x"}), "Instances"),
    (json.dumps({"Definition": "x", "Instances": [{"input": "a", "output": ["b"]}, {"input": "a"}]}),
     "Instances[1].output"),
    (json.dumps({"Definition": "x", "Instances": [{"output": "b"}]}), "Instances[0].input"),
])
def test_malformed_task_raises(tmp_path, content, field):
    path = tmp_path / "task001_bad.json"
    path.write_text(content)
    with pytest.raises(TaskFormatError) as info:
        load_task(path)
    message = str(info.value)
    assert str(path) in message and field in message and "\n" not in message


def test_json_error_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"Definition": "x",\n oops}')
    with pytest.raises(TaskFormatError, match="line 2 column 2"):
        load_task(path)


def test_split_files(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "task1_a.json").write_text(json.dumps(GOOD))
    assert [t.name for t in load_task_folder(tmp_path)] == ["task1_a"]  # no splits: every task
    assert [t.name for t in load_task_folder(tmp_path / "tasks")] == ["task1_a"]  # a bare folder of tasks
    split = tmp_path / "mine.txt"
    split.write_text("# comment\n\ntask1_a\ntask2_missing\n")
    assert read_split(split) == ["task1_a", "task2_missing"]
    with pytest.raises(TaskFormatError, match="task2_missing") as info:
        load_task_folder(tmp_path, split_file=split)
    assert str(split) in str(info.value)
    with pytest.raises(TaskFormatError, match="nope.txt"):
        read_split(tmp_path / "nope.txt")


# --- text format -----------------------------------------------------------------------------------------------

def _task(n_pos=3, n_inst=5, name="t"):
    return Task(name=name, definition="Add one to the number",
                positives=[Example(f"{i}", (f"{i + 1}", "other")) for i in range(n_pos)],
                instances=[Example(f"q{i}", (f"a{i}",)) for i in range(n_inst)], source="mem")


def test_demos_text_def_2pos():
    text = demos_text(_task())
    assert text == ("Definition: Add one to the number.\n\n"
                    " Positive Example 1 -\nInput: 0.\n Output: 1.\n\n"
                    " Positive Example 2 -\nInput: 1.\n Output: 2.\n\n")
    assert "Positive Example 3" not in text
    assert demos_text(_task(), num_positive=0, include_definition=False) == ""
    assert query_text(Example("x?", ("y",)), "Q: {input}") == "Q: x?"


# --- sampler ---------------------------------------------------------------------------------------------------

def test_sampler_deterministic_and_distinct():
    tasks = [_task(name=f"t{i}", n_inst=3 + i) for i in range(4)]
    draw = lambda: [(t.name, [e.input for e in q]) for t, q in TaskSampler(tasks, 7, 3).next_batch(20)]  # noqa: E731
    assert draw() == draw()
    for _, queries in draw():
        assert len(set(queries)) == 3
    short = TaskSampler([_task(n_inst=2)], 0, queries_per_task=5).next_batch(1)[0][1]
    assert len(short) == 5 and {e.input for e in short} == {"q0", "q1"}


def test_sampler_proportional():
    tasks = [_task(name="big", n_inst=100), _task(name="small", n_inst=10)]
    counts = Counter(t.name for t, _ in TaskSampler(tasks, 0).next_batch(11000))
    assert 8 < counts["big"] / counts["small"] < 12.5
    uniform = Counter(t.name for t, _ in TaskSampler(tasks, 0, proportional=False).next_batch(11000))
    assert 0.9 < uniform["big"] / uniform["small"] < 1.1


def test_sampler_state_round_trip():
    tasks = [_task(name=f"t{i}", n_inst=5 + i) for i in range(5)]
    names = lambda batch: [(t.name, [e.input for e in q]) for t, q in batch]  # noqa: E731
    a = TaskSampler(tasks, 3, queries_per_task=2)
    a.next_batch(10)
    state = json.loads(json.dumps(a.state_dict()))
    expected = names(a.next_batch(10))
    b = TaskSampler(tasks, 99, queries_per_task=2)
    b.load_state_dict(state)
    assert names(b.next_batch(10)) == expected


# --- synthetic tasks -------------------------------------------------------------------------------------------

def _bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_deterministic(tmp_path):
    a = write_embedded_tasks(tmp_path / "a", seed=3, instances_per_task=8)
    b = write_embedded_tasks(tmp_path / "b", seed=3, instances_per_task=8)
    c = write_embedded_tasks(tmp_path / "c", seed=4, instances_per_task=8)
    assert _bytes(a) == _bytes(b) != _bytes(c)
    assert not list(a.rglob("*.tmp"))


def test_synthetic_rules_and_held_out_combinations(tmp_path):
    folder = ensure_embedded_tasks(tmp_path / "syn")
    train, test = load_task_folder(folder, "train"), load_task_folder(folder, "test")
    assert len(train) + len(test) == sum(len(f.symbols) ** 2 for f in FAMILIES.values())
    assert {family_of(t.name).name for t in test} == set(FAMILIES)
    rule = {t.name: (family_of(t.name).name, *task_rule(t)) for t in train + test}
    trained = {rule[t.name] for t in train}
    for task in test:
        family, left, right = rule[task.name]
        assert (family, left, right) not in trained  # never trained on this pair
        for symbol in (left, right):  # but on each of its symbols, on both sides
            assert any(r[0] == family and r[1] == symbol for r in trained)
            assert any(r[0] == family and r[2] == symbol for r in trained)
    for task in train + test:
        family = family_of(task.name)
        left, right = task_rule(task)
        assert task.definition == family.definition  # one text per family: it cannot reveal the symbols
        for ex in task.positives + task.instances:
            source = family.parse(ex.input)
            assert 1 <= len(source) <= 2
            assert ex.outputs == (family.render(apply_rule(source, left, right)),)


def test_ensure_reuses(tmp_path):
    folder = ensure_embedded_tasks(tmp_path, seed=1)
    marker = folder / "tasks" / "task_word_0000.json"
    stamp = marker.stat().st_mtime_ns
    ensure_embedded_tasks(tmp_path, seed=1)
    assert marker.stat().st_mtime_ns == stamp
    ensure_embedded_tasks(tmp_path, seed=2)
    assert json.loads((folder / "manifest.json").read_text())["seed"] == 2


def test_few_shot_inputs_truncate_the_demos_and_keep_the_query_whole():
    """FT-Few-Shot: demos + separator + query within max_demo_length + max_input_length tokens; when too long, the
    demos are cut (at their end), never the query; a query-only example is the query as without demos."""
    from transformers import ByT5Tokenizer

    from hypergen.data.collate import Collator
    from hypergen.data.format import DEMOS_QUERY_SEPARATOR
    from hypergen.recipe import Data

    tokenizer = ByT5Tokenizer()
    task = Task("t", "Add one to the number.", [Example("3", ("4",)), Example("5", ("6",))], [Example("7", ("8",))],
                "x")
    data = Data(source="embedded", max_demo_length=60, max_input_length=12, max_target_length=4)
    collator = Collator(tokenizer, data)
    long_query, short_query = Example("1234567890", ("1",)), Example("9", ("10",))
    batch = collator([(task, [long_query, short_query])], demos_in_input=1.0)
    separator = DEMOS_QUERY_SEPARATOR["sni"]
    demos = collator.demos(task)
    assert len(demos) > 60  # the demos alone overflow the budget
    for row, query, mask in zip(batch.input_ids, ("1234567890", "9"), batch.attention_mask):
        text = tokenizer.decode(row[: int(mask.sum())], skip_special_tokens=True)
        assert int(mask.sum()) == 60 + 12 and text.endswith(separator + query)
        assert demos.startswith(text[: -len(separator + query)])  # the demos' beginning, cut at the end
    alone = collator([(task, [long_query])], demos_in_input=0.0)
    assert alone.input_ids[0].tolist() == tokenizer("1234567890", max_length=12, truncation=True)["input_ids"]


def test_max_train_instances_per_task_caps_what_proportional_sampling_sees():
    """A task of 1000 instances and one of 10: proportional sampling draws the big one ~99% of the time; capped at
    10 instances per task both are drawn about equally, the big one's queries come from one fixed subset of 10 (the
    same whatever the seed, so in every process), and the recipe field is checked."""
    from hypergen.errors import RecipeError
    from hypergen.recipe import parse_recipe

    big = Task("big", "d", [], [Example(f"b{i}", ("x",)) for i in range(1000)], "s")
    small = Task("small", "d", [], [Example(f"s{i}", ("x",)) for i in range(10)], "s")
    plain = Counter(t.name for t, _ in TaskSampler([big, small], seed=0).next_batch(2000))
    assert plain["big"] > 1900
    queries = {}
    for seed in (0, 1):
        sampler = TaskSampler([big, small], seed=seed, max_instances_per_task=10)
        draws = sampler.next_batch(2000)
        counts = Counter(t.name for t, _ in draws)
        assert 850 < counts["big"] < 1150
        queries[seed] = {q.input for t, qs in draws if t.name == "big" for q in qs}
    assert len(queries[0]) == 10 and queries[0] == queries[1]
    with pytest.raises(RecipeError, match="max_train_instances_per_task"):
        parse_recipe({"data": {"source": "embedded", "max_train_instances_per_task": 0}})
