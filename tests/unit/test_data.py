"""Bad data gives errors that name the file and line; policies are applied and counted."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tiny
from tuneforge.data.dataset import load_examples
from tuneforge.data.load import load_records
from tuneforge.errors import DataError


def _write(path, text):
    path.write_text(text)
    return path


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", "completion": \n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: malformed JSON"):
        load_records(p)


def test_non_object_line(tmp_path):
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object"):
        load_records(_write(tmp_path / "d.jsonl", "[1, 2]\n"))


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_empty_file_is_an_error(tmp_path, text):
    with pytest.raises(DataError, match="empty"):
        load_records(_write(tmp_path / "d.jsonl", text))


def test_missing_fields_name_the_expected_ones(tmp_path, make_config, tiny_tokenizer):
    p = _write(tmp_path / "d.jsonl", json.dumps({"question": "a", "answer": "b"}) + "\n")
    expected = r"d\.jsonl:1: cannot tell the sft format.*instruction, output.*prompt, completion"
    with pytest.raises(DataError, match=expected):
        load_examples(make_config(), tiny_tokenizer, str(p))


def test_empty_field_and_wrong_type(tmp_path, make_config, tiny_tokenizer):
    p = _write(tmp_path / "d.jsonl", json.dumps({"prompt": "hi", "completion": "  "}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'completion' is empty"):
        load_examples(make_config(), tiny_tokenizer, str(p))
    p = _write(tmp_path / "e.jsonl", json.dumps({"prompt": "hi", "completion": 3}) + "\n")
    with pytest.raises(DataError, match=r"e\.jsonl:1: field 'completion' must be a string"):
        load_examples(make_config(), tiny_tokenizer, str(p))


def test_unknown_role_and_missing_assistant(tmp_path, make_config, tiny_tokenizer):
    bad_role = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yes"}]}
    p = _write(tmp_path / "d.jsonl", json.dumps(bad_role) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: messages\[1\]: unknown role 'bot'"):
        load_examples(make_config(), tiny_tokenizer, str(p))
    p = _write(tmp_path / "e.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="no assistant message"):
        load_examples(make_config(), tiny_tokenizer, str(p))


def test_format_override_is_applied(tmp_path, make_config, tiny_tokenizer):
    row = {"prompt": "hi", "completion": "yes", "instruction": "x", "output": "y"}
    p = tiny.write_jsonl(tmp_path / "d.jsonl", [row])
    exs, stats = load_examples(make_config(data__format="prompt_completion"), tiny_tokenizer, str(p))
    assert stats.format == "prompt_completion"
    assert "hi" in tiny_tokenizer.decode(exs[0].input_ids)


def test_no_supervised_tokens_is_an_error(tmp_path, make_config, tiny_tokenizer):
    long_prompt = " ".join(["hello"] * 100)
    p = tiny.write_jsonl(tmp_path / "d.jsonl", [{"prompt": long_prompt, "completion": "yes"}])
    with pytest.raises(DataError, match="no usable samples.*1 with no supervised tokens"):
        load_examples(make_config(training__max_length=32), tiny_tokenizer, str(p))


def test_overlength_policies_are_counted(tmp_path, make_config, tiny_tokenizer):
    rows = [{"prompt": "hi", "completion": " ".join(["yes"] * 40)}, {"prompt": "hi", "completion": "ok"}]
    p = tiny.write_jsonl(tmp_path / "d.jsonl", rows)
    exs, stats = load_examples(make_config(training__max_length=32), tiny_tokenizer, str(p))
    assert (stats.truncated, stats.examples, max(len(e.input_ids) for e in exs)) == (1, 2, 32)
    _, stats = load_examples(make_config(training__max_length=32, training__overlength="drop"), tiny_tokenizer, str(p))
    assert (stats.dropped_overlength, stats.examples) == (1, 1)
    with pytest.raises(DataError, match=r"d\.jsonl:1: sample has \d+ tokens, over training.max_length=32"):
        load_examples(make_config(training__max_length=32, training__overlength="error"), tiny_tokenizer, str(p))


def test_csv_json_parquet_load_the_same(tmp_path, make_config, tiny_tokenizer):
    rows = tiny.toy_sft_rows(6)
    rows = [r for r in rows if "prompt" in r]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    csv_rows = "".join(f'"{r["prompt"]}","{r["completion"]}"\n' for r in rows)
    (tmp_path / "d.csv").write_text("prompt,completion\n" + csv_rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    jsonl = tiny.write_jsonl(tmp_path / "d.jsonl", rows)
    want = [e.input_ids for e in load_examples(make_config(), tiny_tokenizer, str(jsonl))[0]]
    for name in ("d.json", "d.csv", "d.parquet"):
        got = [e.input_ids for e in load_examples(make_config(), tiny_tokenizer, str(tmp_path / name))[0]]
        assert got == want, name


def test_csv_extra_values_name_the_line(tmp_path):
    p = _write(tmp_path / "d.csv", "prompt,completion\na,b\na,b,c\n")
    with pytest.raises(DataError, match=r"d\.csv:3: more values"):
        load_records(p)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown file type"):
        load_records(tmp_path / "d.txt")
    with pytest.raises(DataError, match="no such data file"):
        load_records(tmp_path / "nope.jsonl")


def test_the_reader_streams(tmp_path):
    """`data check` and the training check pass read through one generator: a record is parsed when it is
    reached, so memory does not grow with the file."""
    from tuneforge.data.load import Record, iter_records

    path = tiny.write_jsonl(tmp_path / "big.jsonl", [{"text": f"row {i}"} for i in range(2000)])
    seen: list[int] = []
    items = iter_records(path, seen.append)
    first = next(items)
    assert isinstance(first, Record) and first.data == {"text": "row 0"} and len(seen) == 1
    assert sum(seen) < path.stat().st_size / 1000


@pytest.mark.parametrize("kind,data,key", [("sft", "messages", "messages"), ("preference", "chosen", "chosen"),
                                           ("prompt", "prompt", "prompt")])
def test_one_chat_message_validator(kind, data, key):
    """data check and every reader (sft formats, preference pairs, RL prompts) word a bad message the same."""
    from tuneforge.data.formats import to_messages
    from tuneforge.data.load import Record
    from tuneforge.data.preference import pair_field
    from tuneforge.data.records import require, view_record

    bad = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]
    row = {"prompt": "q", "rejected": "no", data: bad} if kind == "preference" else {data: bad}
    expected = f"{key}[1]: unknown role 'robot'; expected one of ['assistant', 'system', 'user']"
    _, issues = view_record(row, kind)
    assert [i.message for i in issues] == [expected]
    record = Record(row, "f.jsonl:7")
    readers = {"sft": lambda: to_messages(record, "messages"), "preference": lambda: pair_field(record, key, True),
               "prompt": lambda: require(record, "prompt")}
    with pytest.raises(DataError, match=re.escape(f"f.jsonl:7: {expected}")):
        readers[kind]()
