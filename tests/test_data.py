"""Data loaders: output contract, synthetic generator, MATH-500, generic files and `load_train_dataset` dispatch."""

import json
import operator
import os
import re
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

import cat_trl.data.math500 as math500_module
from cat_trl.data import (
    GOLD_COLUMN,
    build_messages,
    generate_problems,
    load_generic,
    load_math500,
    load_synthetic_math,
    load_train_dataset,
    looks_like_local_path,
    question_text,
    resolve_format,
)
from cat_trl.data.synthetic import _generate_specs
from cat_trl.config.script_args import DEFAULT_INSTRUCTION, CaTScriptArguments

MATH500_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"
needs_math500 = pytest.mark.skipif(not MATH500_FILE.exists(), reason=f"{MATH500_FILE} not present")
WITH_GOLD = ["prompt", "question", "problem_id", GOLD_COLUMN]
WITHOUT_GOLD = ["prompt", "question", "problem_id"]


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path_factory, monkeypatch):
    """Keep the Arrow caches of the tmp files out of the user's ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def args(**kwargs) -> CaTScriptArguments:
    return CaTScriptArguments(**kwargs)


# --------------------------------------------------------------------------------------------------- prompts


def test_gold_column_name():
    assert GOLD_COLUMN == "gold_answer"


def test_build_messages_string():
    assert build_messages("What is 2+2?", "Box it.") == [{"role": "user", "content": "What is 2+2?\n\nBox it."}]
    assert build_messages("Q", "I", system_prompt="S") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q\n\nI"},
    ]
    assert build_messages("Q", "") == [{"role": "user", "content": "Q"}]
    assert build_messages("Q")[0]["content"] == "Q\n\n" + DEFAULT_INSTRUCTION
    with pytest.raises(ValueError, match="empty"):
        build_messages("   ")


def test_build_messages_multi_turn():
    conv = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    out = build_messages(conv, "I", system_prompt="S")
    assert out == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second\n\nI"},
    ]
    assert conv[-1]["content"] == "second"  # input not mutated
    assert build_messages(conv, "") == conv
    assert question_text(conv) == "second"
    with_system = [{"role": "system", "content": "own"}, *conv]
    assert build_messages(with_system, "", system_prompt="S") == with_system  # no second system message
    with pytest.raises(ValueError, match="user"):
        build_messages([{"role": "assistant", "content": "x"}])


# ------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_seed_sensitive():
    a, b = generate_problems(50, seed=3), generate_problems(50, seed=3)
    assert a == b
    other = generate_problems(50, seed=4)
    assert [p["question"] for p in a] != [p["question"] for p in other]
    assert len({p["problem_id"] for p in a}) == 50
    assert set(a[0]) == {"question", "answer", "problem_id"}
    assert len({p["question"] for p in a}) > 40  # varied templates, not one repeated problem


@pytest.mark.parametrize("max_steps", [1, 2, 3])
def test_synthetic_answers_correct(max_steps):
    ops = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}
    specs = _generate_specs(300, seed=11, max_steps=max_steps)
    problems = generate_problems(300, seed=11, max_steps=max_steps)
    assert [q for _, q in specs] == [p["question"] for p in problems]
    step_counts = set()
    for (spec, question), problem in zip(specs, problems):
        value = spec.start
        for op, k in spec.steps:
            value = ops[op](value, k)
            assert value >= 0
        assert problem["answer"] == str(value)
        assert re.fullmatch(r"\d+", problem["answer"]) and 0 <= int(problem["answer"]) < 1000
        # The text carries exactly the spec's numbers, in order: the answer is recomputable from the question.
        assert [int(n) for n in re.findall(r"\d+", question)] == [spec.start, *(k for _, k in spec.steps)]
        assert question.endswith("?") and spec.name in question and spec.objects in question
        step_counts.add(len(spec.steps))
    assert step_counts == set(range(1, max_steps + 1))


def test_synthetic_arg_validation():
    for bad in (0, 4):
        with pytest.raises(ValueError, match="1..3"):
            generate_problems(5, max_steps=bad)
    with pytest.raises(ValueError, match="positive"):
        generate_problems(0)


def test_synthetic_dataset_contract():
    ds = load_synthetic_math(20, seed=1, max_steps=2, instruction="Box it.", system_prompt="Be terse.")
    assert isinstance(ds, Dataset) and ds.column_names == WITH_GOLD and len(ds) == 20
    problems = generate_problems(20, seed=1, max_steps=2)
    for row, problem in zip(ds, problems):
        assert row["prompt"] == [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": problem["question"] + "\n\nBox it."},
        ]
        assert row["question"] == problem["question"] and row["gold_answer"] == problem["answer"]
        assert row["problem_id"] == problem["problem_id"]
        # Gold never leaks into the model-visible text.
        text = row["question"] + " ".join(m["content"] for m in row["prompt"])
        assert "answer is" not in text.lower()
        assert f"= {row['gold_answer']}" not in text and f"={row['gold_answer']}" not in text


def test_synthetic_empty_instruction_no_system():
    ds = load_synthetic_math(3, seed=0, instruction="", system_prompt=None)
    assert ds[0]["prompt"] == [{"role": "user", "content": ds[0]["question"]}]


# -------------------------------------------------------------------------------------------------- MATH-500


@needs_math500
def test_math500_local_file():
    raw = [json.loads(line) for line in MATH500_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    ds = load_math500(str(MATH500_FILE), instruction="I")
    assert len(ds) == 500 and ds.column_names == WITH_GOLD
    for i in (0, 1, 123, 499):
        assert ds[i]["gold_answer"] == raw[i]["answer"] != raw[i]["solution"]
        assert ds[i]["problem_id"] == raw[i]["unique_id"]
        assert ds[i]["question"] == raw[i]["problem"]
        assert ds[i]["prompt"] == [{"role": "user", "content": raw[i]["problem"] + "\n\nI"}]


@needs_math500
def test_math500_max_samples_deterministic():
    a = load_train_dataset(args(dataset_name=str(MATH500_FILE), dataset_max_samples=20, dataset_shuffle_seed=5))
    b = load_train_dataset(args(dataset_name=str(MATH500_FILE), dataset_max_samples=20, dataset_shuffle_seed=5))
    c = load_train_dataset(args(dataset_name=str(MATH500_FILE), dataset_max_samples=20, dataset_shuffle_seed=6))
    assert len(a) == 20 and a.column_names == WITH_GOLD
    assert a["problem_id"] == b["problem_id"] != c["problem_id"]
    assert a["problem_id"] != load_math500(str(MATH500_FILE))["problem_id"][:20]  # actually shuffled
    assert len(load_train_dataset(args(dataset_name=str(MATH500_FILE), dataset_max_samples=10_000))) == 500


def test_math500_schema_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1+1?", "solution": "2", "unique_id": "a"}])
    with pytest.raises(ValueError, match=r"answer.*") as err:
        load_math500(str(path))
    assert "bad.jsonl" in str(err.value) and "'answer'" in str(err.value)


def test_math500_hub_dispatch(monkeypatch):
    """`math500` maps to the hub id and its only split `test`; no network needed thanks to the stub."""
    calls = []

    def fake_load_raw(name, config=None, split="train"):
        calls.append((name, split))
        return Dataset.from_dict({"problem": ["p"], "answer": ["a"], "unique_id": ["u"], "level": [1]})

    monkeypatch.setattr(math500_module, "load_raw", fake_load_raw)
    for name in ("math500", "HuggingFaceH4/MATH-500"):
        ds = load_train_dataset(args(dataset_name=name))
        assert ds.column_names == WITH_GOLD and ds[0]["problem_id"] == "u" and ds[0]["gold_answer"] == "a"
    assert calls == [("HuggingFaceH4/MATH-500", "test")] * 2


# --------------------------------------------------------------------------------------------------- generic


def test_generic_jsonl_strings_with_gold(tmp_path):
    rows = [{"prompt": f"What is {i}+1?", "gold": i + 1, "id": f"q{i}", "extra": "x"} for i in range(4)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    ds = load_generic(str(path), gold_column="gold", instruction="I", system_prompt="S")
    assert ds.column_names == WITH_GOLD
    assert ds["gold_answer"] == ["1", "2", "3", "4"] and ds["problem_id"] == ["q0", "q1", "q2", "q3"]
    assert ds[2]["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+1?\n\nI"}]
    assert ds[2]["question"] == "What is 2+1?"
    # No gold column requested -> no gold column; no id column -> row index.
    path2 = write_jsonl(tmp_path / "noid.jsonl", [{"q": "A?"}, {"q": "B?"}])
    ds2 = load_generic(str(path2), prompt_column="q")
    assert ds2.column_names == WITHOUT_GOLD and ds2["problem_id"] == ["0", "1"]


def test_generic_multi_turn(tmp_path):
    convs = [
        [
            {"role": "system", "content": "own system"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "What is 3*3?"},
        ],
        [{"role": "user", "content": "What is 5-2?"}],
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in convs])
    ds = load_generic(str(path), prompt_column="messages", instruction="I", system_prompt="S")
    first, second = ds[0]["prompt"], ds[1]["prompt"]
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user"]
    assert first[0]["content"] == "own system" and first[1]["content"] == "hi"
    assert first[3]["content"] == "What is 3*3?\n\nI"
    assert second == [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 5-2?\n\nI"}]
    assert ds["question"] == ["What is 3*3?", "What is 5-2?"]
    plain = load_generic(str(path), prompt_column="messages", instruction="")
    assert plain[0]["prompt"] == convs[0]


def test_generic_parquet_csv_and_disk(tmp_path):
    src = Dataset.from_dict({"question": ["A?", "B?", "C?"], "answer": ["1", "2", "3"], "unique_id": ["a", "b", "c"]})
    src.to_parquet(str(tmp_path / "d.parquet"))
    src.to_csv(str(tmp_path / "d.csv"), index=False)
    src.save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": src, "test": src.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    for path, n in [("d.parquet", 3), ("d.csv", 3), ("saved", 3), ("saved_dict", 3)]:
        ds = load_generic(str(tmp_path / path), prompt_column="question", gold_column="answer", instruction="")
        assert ds.column_names == WITH_GOLD and len(ds) == n, path
        assert ds["problem_id"] == ["a", "b", "c"] and ds["gold_answer"] == ["1", "2", "3"], path
        assert ds[1]["prompt"] == [{"role": "user", "content": "B?"}], path
    test_split = load_generic(str(tmp_path / "saved_dict"), split="test", prompt_column="question")
    assert len(test_split) == 1
    with pytest.raises(ValueError, match="nope"):
        load_generic(str(tmp_path / "saved_dict"), split="nope", prompt_column="question")


def test_generic_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "A?", "sol": "1"}, {"text": "", "sol": "2"}])
    with pytest.raises(ValueError, match=r"'prompt'.*\['text', 'sol'\]"):
        load_generic(str(path))
    with pytest.raises(ValueError, match=r"'gold'.*\['text', 'sol'\]"):
        load_generic(str(path), prompt_column="text", gold_column="gold")
    with pytest.raises(ValueError, match="Row 1"):
        load_generic(str(path), prompt_column="text")
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_generic(str(missing))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="Unsupported"):
        load_generic(str(tmp_path / "d.txt"))


def test_looks_like_local_path():
    assert not looks_like_local_path("HuggingFaceH4/MATH-500")
    assert not looks_like_local_path("gsm8k")
    for local in ("data/train.jsonl", "./data", "/abs/dir", "a/b/c", "~/x", "x.parquet"):
        assert looks_like_local_path(local), local


# -------------------------------------------------------------------------------------------------- dispatch


def test_dispatch_synthetic():
    ds = load_train_dataset(args(synthetic_num_problems=12, synthetic_seed=2, synthetic_max_steps=3))
    assert ds.column_names == WITH_GOLD and len(ds) == 12
    assert ds["gold_answer"] == [p["answer"] for p in generate_problems(12, seed=2, max_steps=3)]
    assert ds[0]["prompt"][-1]["content"].endswith(DEFAULT_INSTRUCTION)
    # Explicit format ignores the name; system prompt and instruction flow through.
    ds2 = load_train_dataset(
        args(dataset_name="whatever", dataset_format="synthetic_math", synthetic_num_problems=3,
             prompt_instruction="", system_prompt="S")
    )  # fmt: skip
    assert ds2[0]["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": ds2[0]["question"]}]
    sub = load_train_dataset(args(synthetic_num_problems=30, dataset_max_samples=7, dataset_shuffle_seed=1))
    full = load_train_dataset(args(synthetic_num_problems=30))
    assert len(sub) == 7 and set(sub["problem_id"]) < set(full["problem_id"])
    with pytest.raises(ValueError, match="1..3"):
        load_train_dataset(args(synthetic_max_steps=5))


@needs_math500
def test_dispatch_math500_local():
    assert resolve_format(str(MATH500_FILE)) == "math500"
    ds = load_train_dataset(args(dataset_name=str(MATH500_FILE), system_prompt="S"))
    assert len(ds) == 500 and ds.column_names == WITH_GOLD and ds[0]["prompt"][0] == {"role": "system", "content": "S"}
    # Forced generic on the same file: prompt column must be named.
    generic = load_train_dataset(
        args(dataset_name=str(MATH500_FILE), dataset_format="generic", dataset_prompt_column="problem")
    )
    assert generic.column_names == WITHOUT_GOLD and generic["problem_id"] == ds["problem_id"]


def test_dispatch_generic_and_forced_math500(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "A?", "gold": "1"}, {"prompt": "B?", "gold": "2"}])
    assert resolve_format(str(path)) == "generic"
    ds = load_train_dataset(args(dataset_name=str(path), dataset_gold_column="gold", prompt_instruction="I"))
    assert ds.column_names == WITH_GOLD and ds["gold_answer"] == ["1", "2"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "A?\n\nI"}]
    m = write_jsonl(tmp_path / "m.jsonl", [{"problem": "P?", "answer": "7", "unique_id": "u1"}])
    assert resolve_format(str(m)) == "math500"
    assert resolve_format(str(m), "generic") == "generic"
    m2 = write_jsonl(tmp_path / "m2.jsonl", [{"problem": "P?", "answer": "7"}])  # no unique_id: auto -> generic
    assert resolve_format(str(m2)) == "generic"
    forced = load_train_dataset(args(dataset_name=str(m2), dataset_format="math500"))
    assert forced["gold_answer"] == ["7"] and forced["problem_id"] == ["0"]
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"problem": "P?", "answer": "7", "unique_id": "u1"}]))
    assert resolve_format(str(arr)) == "math500"


def test_dispatch_errors(tmp_path, monkeypatch):
    # Argument errors are raised before anything is loaded.
    monkeypatch.setattr("cat_trl.data.load_generic", lambda *a, **k: pytest.fail("loaded data"))
    with pytest.raises(ValueError, match=r"Unknown dataset_format 'csv'.*auto, synthetic_math, math500, healthbench, generic"):
        load_train_dataset(args(dataset_name="x", dataset_format="csv"))
    for bad in (0, -3):
        with pytest.raises(ValueError, match="dataset_max_samples"):
            load_train_dataset(args(dataset_max_samples=bad))
    missing = str(tmp_path / "nope" / "train.jsonl")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_train_dataset(args(dataset_name=missing))
    with pytest.raises(FileNotFoundError, match="data.parquet"):
        load_train_dataset(args(dataset_name="data.parquet", dataset_format="generic"))
    with pytest.raises(ValueError, match="dataset_name is required"):
        load_train_dataset(args(dataset_name=None))
    assert os.sep in missing


def test_completion_text_never_returns_the_string_none():
    from cat_trl.messages import completion_text

    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": None}, {"text": "a"}]}]) == "a"
    assert completion_text(None) == ""
    assert completion_text([{"role": "assistant", "content": "x"}]) == "x"
