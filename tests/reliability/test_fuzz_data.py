"""Property-based fuzzing of the data loaders and every stage's record builder (hypothesis, derandomized):
any file (random bytes, random JSON values, random records with wrong types, missing keys, huge values,
unicode, NUL, BOM, CRLF) ends in valid records / examples or a DataError (ConfigError for labels) that
names the file, never another exception. Each property counts the inputs it tried (printed with -s).

    HF_HUB_OFFLINE=1 python -m pytest -q -s tests/reliability/test_fuzz_data.py
"""

from __future__ import annotations

import atexit
import csv
import io
import itertools
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.config.schema import Config
from tuneforge.data.classify import label_set, load_cls_examples
from tuneforge.data.dataset import load_examples, load_train_eval_records
from tuneforge.data.formats import detect_format, to_messages, to_text
from tuneforge.data.load import BadLine, Record, iter_records, load_records
from tuneforge.data.preference import load_pair_examples
from tuneforge.errors import ConfigError, DataError
from tuneforge.rl.prompts import load_prompt_examples

FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
TRIED: Counter[str] = Counter()
_SEQ = itertools.count()
_DIR = Path(tempfile.mkdtemp(prefix="tf-fuzz-data-"))
atexit.register(shutil.rmtree, _DIR, True)  # hypothesis runs many inputs per test: one scratch dir
SUFFIXES = [".jsonl", ".ndjson", ".json", ".csv", ".parquet"]  # .ndjson: JSONL written with \u escapes
FIELDS = ["text", "label", "instruction", "input", "output", "prompt", "completion", "messages", "chosen",
          "rejected", "role", "content", "data", "text_pair", ""]

text = st.text(max_size=12)
ugly_text = st.one_of(text, st.sampled_from(["", " ", "\x00", "\ufeff", "\r\n", "a\r\nb", "é" * 40, "\U0001f600",
                                            "--5", "\u00b2", "\u2460", "-", "007", "\ud800", "{{ x }}", "<|im_end|>",
                                            "word " * 200]))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), ugly_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(FIELDS), text), inner, max_size=4)),
    max_leaves=10)
message = st.fixed_dictionaries({}, optional={"role": st.one_of(st.sampled_from(["user", "assistant", "system"]),
                                                                 json_values), "content": json_values})
field_value = st.one_of(json_values, st.lists(message, max_size=3))


def _path(suffix: str) -> Path:
    return _DIR / f"d{next(_SEQ)}{suffix}"


def _dump(rows: list, suffix: str) -> bytes | None:
    """Random rows as a file of that type (None when the type cannot hold them, e.g. mixed Parquet columns)."""
    if suffix in (".jsonl", ".ndjson"):
        ascii_ = suffix == ".ndjson"
        return "".join(json.dumps(r, ensure_ascii=ascii_) + "\r\n" for r in rows).encode("utf-8", "surrogatepass")
    if suffix == ".json":
        return json.dumps(rows).encode()
    if suffix == ".csv":
        names = sorted({k for r in rows if isinstance(r, dict) for k in r})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        writer.writerows(r for r in rows if isinstance(r, dict))
        return buf.getvalue().encode("utf-8", "surrogatepass")
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    try:
        pq.write_table(pa.Table.from_pylist(rows), sink)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    return sink.getvalue().to_pybytes()


def _expect_named(exc: Exception, path: Path) -> None:
    assert str(path) in str(exc), f"error does not name {path}: {exc}"


def _read_both(path: Path) -> list[Record] | None:
    """The whole-file loader and the streaming reader agree: records, or a DataError naming the file."""
    streamed: list = []
    try:
        streamed = list(iter_records(path))
    except DataError as exc:
        _expect_named(exc, path)
    for item in streamed:
        assert isinstance(item, Record | BadLine) and str(path) in item.where
    try:
        loaded = load_records(path)
    except DataError as exc:
        _expect_named(exc, path)
        TRIED["data: ... ended in a DataError"] += 1
        return None
    assert all(isinstance(r, Record) and isinstance(r.data, dict) and str(path) in r.where for r in loaded)
    if not any(isinstance(i, BadLine) for i in streamed) and _comparable(loaded):
        assert [r.data for r in streamed] == [r.data for r in loaded]
    TRIED["data: ... ended in records"] += 1
    return loaded


def _comparable(loaded: list[Record]) -> bool:
    """NaN != NaN: rows holding a float NaN cannot be compared for equality."""
    return "NaN" not in json.dumps([r.data for r in loaded], default=str)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(SUFFIXES))
def test_any_bytes(data, suffix):
    TRIED["data: random bytes"] += 1
    path = _path(suffix)
    path.write_bytes(data)
    _read_both(path)


@FUZZ
@given(st.lists(json_values, min_size=1, max_size=4), st.sampled_from(["", "\ufeff"]), st.sampled_from(["\n", "\r\n"]),
       st.sampled_from([".jsonl", ".json"]))
def test_any_json_values(values, bom, newline, suffix):
    TRIED["data: random JSON values"] += 1
    path = _path(suffix)
    body = newline.join(json.dumps(v) for v in values) if suffix == ".jsonl" else json.dumps(values)
    path.write_bytes((bom + body + newline).encode("utf-8", "surrogatepass"))
    _read_both(path)


def test_hostile_json_files():
    """Inputs a random generator rarely builds: huge integers, deep nesting, NUL, lone surrogates, BOM + CSV."""
    cases = {".jsonl": ['{"text": ' + "9" * 5000 + "}", "[" * 100000 + "]" * 100000, '{"text": "\\ud800"}',
                        '{"text": "a\\u0000b"}', '{"text": NaN}', "\ufeff" + '{"text": "x"}'],
             ".json": ["[" * 100000 + "]" * 100000, '[{"a": ' + "1" * 5000 + "}]", "\ufeff[]"],
             ".csv": ["text,label\n" + "x" * 200000 + ",a\n", "\ufefftext,label\nhi,a\n", "a\x00b,c\n1,2\n",
                      'text\n"unterminated\n']}
    for suffix, bodies in cases.items():
        for body in bodies:
            TRIED["data: hostile files"] += 1
            path = _path(suffix)
            path.write_bytes(body.encode("utf-8", "surrogatepass"))
            _read_both(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


STAGES = ["sft", "pretrain", "classify", "reward", "dpo", "ppo", "grpo"]
REWARDS = {"rewards": [{"function": "tuneforge.rl.rewards:exact_match"}], "max_new_tokens": 8}


def _config(tiny_model_dir, stage: str, path: Path, overlength: str) -> Config:
    return Config.model_validate({
        "model": str(tiny_model_dir), "stage": stage, "method": {"name": "lora"},
        "data": {"train": str(path)}, "output_dir": str(_DIR / "never-written"),
        "training": {"max_length": 48, "overlength": "split" if stage == "pretrain" and overlength == "truncate"
                     else overlength, "progress": False},
        **({stage: REWARDS} if stage in ("ppo", "grpo") else {})})


def _build(cfg: Config, tokenizer, path: Path) -> int:
    """What a training stage does with its data before a model loads (the check pass, then the stage's
    builder); returns the examples built."""
    train, _ = load_train_eval_records(cfg, log=lambda _m: None)
    if cfg.stage == "classify":
        examples, _ = load_cls_examples(cfg, tokenizer, train, label_set(cfg, train))
    elif cfg.stage in ("reward", "dpo"):
        examples, _ = load_pair_examples(cfg, tokenizer, train)
    elif cfg.stage in ("ppo", "grpo"):
        examples, _ = load_prompt_examples(cfg, tokenizer, train)
    else:
        examples, _ = load_examples(cfg, tokenizer, str(path), train)
    assert examples
    return len(examples)


def _outcome(name: str, build) -> None:
    try:
        build()
    except (DataError, ConfigError) as exc:  # ConfigError: e.g. data.labels duplicates
        TRIED[f"data: ... {name}: user error"] += 1
        return exc
    TRIED[f"data: ... {name}: examples built"] += 1
    return None


def _msgs(*turns: str) -> list[dict]:
    return [{"role": role, "content": content} for role, content in zip(("user", "assistant") * 2, turns, strict=False)]


# One valid row per record shape a stage reads; the fuzzer breaks them field by field.
VALID_ROWS = {
    "sft": [{"instruction": "what color is the sky ?", "input": "", "output": "blue ."},
            {"prompt": "say hi", "completion": "hi there"}, {"messages": _msgs("hello", "hi", "bye", "ok")}],
    "pretrain": [{"text": "the cat is on the dog . " * 3}],
    "classify": [{"text": "yes fine thanks", "label": 0}, {"text": "no bye", "label": "1"}, {"text": "ok", "label": 2}],
    "reward": [{"prompt": "say hi", "chosen": "hi there", "rejected": "no"},
               {"chosen": _msgs("hello", "hi"), "rejected": _msgs("hello", "go away")}],
    "ppo": [{"prompt": "what is one and one ?", "answer": "two"}, {"prompt": _msgs("say yes"), "answer": "yes"}],
}
VALID_ROWS["dpo"], VALID_ROWS["grpo"] = VALID_ROWS["reward"], VALID_ROWS["ppo"]
edit = st.tuples(st.sampled_from(["set", "delete", "add", "keep", "text"]), st.sampled_from(FIELDS),
                 st.one_of(ugly_text, field_value))


def _set_text(row: dict, key: str, value: str) -> None:
    if isinstance(row.get(key), str):
        row[key] = value
    elif isinstance(row.get(key), list) and row[key] and isinstance(row[key][-1], dict):
        row[key] = [*row[key][:-1], {**row[key][-1], "content": value}]


@st.composite
def stage_rows(draw, stage: str) -> list[dict]:
    """1-6 rows, each a valid row of the stage with 0-3 fields replaced by any value, deleted or added."""
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = dict(draw(st.sampled_from(VALID_ROWS[stage])))
        for action, key, value in draw(st.lists(edit, max_size=3)):
            target = draw(st.sampled_from(sorted(row))) if row and action != "add" else key
            if action == "delete":
                row.pop(target, None)
            elif action in ("set", "add"):
                row[target] = value
            elif action == "text":  # keep the shape, change the words: an edge-case string
                _set_text(row, target, draw(ugly_text))
        rows.append(row)
    return rows


@pytest.mark.parametrize("stage", STAGES)
@FUZZ
@given(data=st.data(), suffix=st.sampled_from(SUFFIXES), overlength=st.sampled_from(["truncate", "drop", "error"]))
def test_any_records_every_stage(tiny_model_dir, tokenizer, stage, data, suffix, overlength):
    """Broken variants of each stage's valid rows through the stage's whole data path (check pass, loader,
    record builder, tokenizer), and through `tuneforge validate`'s path (the builders without the check)."""
    from tuneforge.data.stage_data import load_stage_data

    rows = data.draw(stage_rows(stage))
    content = _dump(rows, suffix)
    if content is None:
        return
    TRIED[f"data: random records, stage {stage}"] += 1
    path = _path(suffix)
    path.write_bytes(content)
    cfg = _config(tiny_model_dir, stage, path, overlength)
    # `tuneforge validate` builds through data.stage_data.load_stage_data: the check pass, then the stage's builder
    paths = [("training path", lambda: _build(cfg, tokenizer, path)),
             ("validate path", lambda: load_stage_data(cfg, tokenizer, log=lambda _m: None))]
    for name, build in paths:
        exc = _outcome(name, build)
        if isinstance(exc, DataError):
            _expect_named(exc, path)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), field_value, max_size=5))
def test_record_builders_alone(data):
    """The builders are also called on records that skipped the check pass (eval sets, predict, chat):
    each one alone returns a value or a DataError naming the record."""
    TRIED["data: random records, builders alone"] += 1
    record = Record(data, "mem.jsonl:7")
    for build in (lambda: to_messages(record, detect_format(record, "sft")), lambda: to_text(record),
                  *(lambda f=f: to_messages(record, f) for f in ("alpaca", "prompt_completion", "messages"))):
        try:
            build()
        except DataError as exc:
            assert "mem.jsonl:7" in str(exc)


PROPERTIES = {"data: random bytes": test_any_bytes, "data: random JSON values": test_any_json_values,
              "data: hostile files": test_hostile_json_files, "data: random records, builders alone":
              test_record_builders_alone, **{f"data: random records, stage {stage}": stage for stage in STAGES}}


def test_zz_report_counts(tiny_model_dir, tokenizer):
    """Runs last in this file: prints the inputs each property tried (the figures in docs/reliability.md).
    Run alone (or with -k), it first runs the properties that did not run, so it never passes on no inputs."""
    for name, prop in PROPERTIES.items():
        if not TRIED[name]:  # a string names a stage of the parametrized property
            prop() if callable(prop) else test_any_records_every_stage(tiny_model_dir, tokenizer, stage=prop)
    print("\n" + "\n".join(f"FUZZ {k}: {v} inputs" for k, v in sorted(TRIED.items())))
    # each property tried at least half its 100 draws (a file type may not hold a draw: mixed Parquet columns)
    assert all(TRIED[name] >= (1 if name == "data: hostile files" else 50) for name in PROPERTIES), TRIED
    assert TRIED["data: ... ended in records"] > 0 and TRIED["data: ... ended in a DataError"] > 0, TRIED
    for path in ("training path", "validate path"):  # both outcomes on both paths: the fuzzing reached the builders
        assert TRIED[f"data: ... {path}: examples built"] > 0 and TRIED[f"data: ... {path}: user error"] > 0, TRIED
