"""`data check` on hand-made dirty files: every defect reported with its line and count; clean data
passes; exit codes 0 / 1 / 2; token statistics agree with the function that builds training labels."""

import json
import re
from pathlib import Path

import pytest

from tuneforge.cli import main
from tuneforge.data.load import iter_records, load_records
from tuneforge.data.templates import apply_template, build_sft_example
from tuneforge.datatools.check import check_records
from tuneforge.errors import DataError

GOOD = {"instruction": "what color is the sky ?", "input": "", "output": "the sky is blue ."}
LONG = "one two three four five six seven eight nine ten apple banana cherry lorem ipsum dolor sit amet"


def dirty_sft(path: Path) -> dict[str, list[int]]:
    """Write a file with known defects; return {kind: [line numbers]}."""
    lines: list[bytes | str | dict] = [
        GOOD,                                                                       # 1 ok
        {"prompt": "what is the capital of france ?", "completion": ""},            # 2 empty_field
        '{"prompt": "broken"',                                                      # 3 malformed_json
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]},  # 4 unknown_role
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]},  # 5 turn_order
        {"foo": 1},                                                                 # 6 unknown_format
        "",                                                                         # 7 blank: skipped
        {"instruction": 5, "output": "x"},                                          # 8 wrong_type
        "[1, 2]",                                                                   # 9 not_object
        GOOD,                                                                       # 10 duplicate of 1
        {"messages": [{"role": "user", "content": "hi"}]},                          # 11 no_assistant
        b'{"prompt": "caf\xe9", "completion": "x"}',                                # 12 not_utf8
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},                      # 13 turn_order
        {"prompt": LONG, "completion": "yes"},                                      # 14 ok
        {"prompt": LONG.upper() + "!", "completion": "Yes."},                       # 15 near_duplicate of 14
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},     # 16 bad_message
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                      {"role": "system", "content": "late"}]},                      # 17 turn_order
        {"instruction": "x", "input": "", "output": "  "},                          # 18 empty_field
        GOOD,                                                                       # 19 duplicate of 1
    ]
    with path.open("wb") as f:
        for line in lines:
            raw = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
            f.write(raw + b"\n")
    return {"empty_field": [2, 18], "malformed_json": [3], "unknown_role": [4], "turn_order": [5, 13, 17],
            "unknown_format": [6], "wrong_type": [8], "not_object": [9], "duplicate": [10, 19],
            "no_assistant": [11], "not_utf8": [12], "near_duplicate": [15], "bad_message": [16]}


def found_lines(report) -> dict[str, list[int]]:
    """Line numbers per kind of per-record problem (file-level ones, like rare_label, have none)."""
    return {kind: [int(re.match(r".*?:(\d+): ", e).group(1)) for e in f.examples]
            for kind, f in report.findings.items() if kind not in ("rare_label", "single_label", "empty_file")}


def test_every_defect_is_reported_with_its_line_and_count(tmp_path):
    path = tmp_path / "dirty.jsonl"
    expected = dirty_sft(path)
    report = check_records(iter_records(path), "sft")
    assert found_lines(report) == expected
    assert {k: f.count for k, f in report.findings.items()} == {k: len(v) for k, v in expected.items()}
    assert report.records == 18  # the blank line is not a record
    assert report.valid == 18 - sum(len(v) for k, v in expected.items() if k in {f.kind for f in report.errors})
    assert "line 1" not in json.dumps(report.to_dict())  # duplicates name the first occurrence as file:line
    assert report.findings["duplicate"].examples[0].endswith(f"duplicate of {path}:1")
    assert "of " + f"{path}:14" in report.findings["near_duplicate"].examples[0]


def test_listing_is_capped_but_counts_are_not(tmp_path):
    path = tmp_path / "dups.jsonl"
    path.write_text("".join(json.dumps(GOOD) + "\n" for _ in range(30)))
    report = check_records(iter_records(path), "sft", max_examples=5)
    assert report.findings["duplicate"].count == 29
    assert len(report.findings["duplicate"].examples) == 5


def test_classification_labels_conflicts_and_rare_labels(tmp_path):
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"},
            {"text": "good film", "label": "neg"}, {"text": "fine film", "label": "pos"},
            {"text": "", "label": "pos"}, {"text": "odd film", "label": "meh"}, {"text": "x y", "label": 1.5},
            {"text": "loud film"}]
    path = tmp_path / "cls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = check_records(iter_records(path), "classify")
    assert dict(report.labels) == {"pos": 2, "neg": 2, "meh": 1}
    assert found_lines(report) == {"conflicting_label": [3], "empty_field": [5], "bad_label": [7],
                                   "missing_field": [8]}
    assert report.findings["rare_label"].count == 1 and "'meh'" in report.findings["rare_label"].examples[0]
    single = tmp_path / "single.jsonl"
    single.write_text("".join(json.dumps({"text": f"t{i}", "label": "a"}) + "\n" for i in range(3)))
    assert set(check_records(iter_records(single), "classify").findings) == {"single_label"}


def test_preference_rows(tmp_path):
    msgs = [{"role": "assistant", "content": "yes"}]
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"},
            {"prompt": "q2", "chosen": "same", "rejected": " same "},
            {"prompt": [{"role": "user", "content": "q3"}], "chosen": msgs, "rejected": msgs},
            {"prompt": "q4", "chosen": "a"},
            {"prompt": [{"role": "user", "content": "q5"}], "chosen": msgs,
             "rejected": [{"role": "assistant", "content": "no"}]}]
    path = tmp_path / "pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = check_records(iter_records(path), "dpo")
    assert found_lines(report) == {"chosen_equals_rejected": [2, 3], "missing_field": [4]}
    assert report.valid == 2


def test_token_statistics_match_the_training_labels(tiny_tokenizer, tmp_path):
    rows = [{"prompt": " ".join(["one"] * n), "completion": "yes ."} for n in (2, 8, 16, 60)]
    path = tmp_path / "lens.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    apply_template(tiny_tokenizer, "auto")
    report = check_records(iter_records(path), "sft", tokenizer=tiny_tokenizer, max_length=40)
    examples = [build_sft_example(tiny_tokenizer, [{"role": "user", "content": r["prompt"]},
                                                   {"role": "assistant", "content": r["completion"]}]) for r in rows]
    lengths = [len(e.input_ids) for e in examples]
    assert report.tokens["max"] == max(lengths) and report.tokens["min"] == min(lengths)
    assert report.tokens["over_max_length"] == sum(n > 40 for n in lengths) == report.findings["over_max_length"].count
    assert report.tokens["supervised_share"] == round(sum(e.n_supervised for e in examples) / sum(lengths), 4)
    # truncated at 40 tokens, the 60-word prompt leaves nothing to supervise; the 16-word one is over 40 but keeps some
    unsupervised = [i + 1 for i, e in enumerate(examples) if all(x == -100 for x in e.labels[:40])]
    assert found_lines(report)["no_supervised_tokens"] == unsupervised == [4]
    assert lengths[2] > 40


def test_stages_can_raise_on_loaded_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"instruction": "", "output": "x"}) + "\n")
    report = check_records(load_records(path), "sft")
    with pytest.raises(DataError, match=r"empty_field \(1\)[\s\S]*d.jsonl:2: field 'instruction' is empty"):
        report.raise_for_errors()
    assert report.warning_lines() == []


def test_csv_and_parquet_locations(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text,label\ngood,pos\n,neg\nbad,neg,extra\n")
    assert found_lines(check_records(iter_records(csv_path), "classify")) == {"empty_field": [3], "bad_csv_row": [4]}
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a b", "label": "x"}, {"text": "a b", "label": "x"},
                                         {"text": "c", "label": "y"}, {"text": "d", "label": "y"}]), pq_path)
    report = check_records(iter_records(pq_path), "classify")
    assert report.findings["duplicate"].examples == [f"{pq_path}: row 1: duplicate of {pq_path}: row 0"]


def test_cli_exit_codes_and_outputs(tmp_path, tiny_model_dir, capsys):
    dirty = tmp_path / "dirty.jsonl"
    dirty_sft(dirty)
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(GOOD) + "\n" + json.dumps({"prompt": LONG, "completion": "ok"}) + "\n")
    assert main(["data", "check", str(clean), "--no-progress"]) == 0
    assert main(["data", "check", str(dirty), "--no-progress", "--model", str(tiny_model_dir), "--max-length", "20",
                 "--out", str(tmp_path / "out")]) == 1
    out = tmp_path / "out"
    assert json.loads((out / "check.json").read_text())["findings"]["malformed_json"]["count"] == 1
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["data", "check", str(tmp_path / "missing.jsonl"), "--no-progress"]) == 2
    assert main(["data", "check", str(tmp_path / "data.txt"), "--no-progress"]) == 2
    assert "unknown file type" in capsys.readouterr().err
    assert main(["data", "check", str(clean), "--no-progress", "--near-dup", "1.5"]) == 2
    assert "near-duplicate threshold must be in (0, 1]" in capsys.readouterr().err
