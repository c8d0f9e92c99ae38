"""`data prepare`: what is dropped and changed is counted and carded, the input is untouched, the output
is idempotent, deterministic for a seed, stratified for labels, and appears atomically."""

import hashlib
import json
from pathlib import Path

import pytest

from tuneforge.cli import main
from tuneforge.datatools import prepare as prepare_mod
from tuneforge.datatools.prepare import PrepareOptions, prepare
from tuneforge.datatools.transform import normalize_text
from tuneforge.errors import ConfigError

LONG = "one two three four five six seven eight nine ten apple banana cherry lorem ipsum dolor sit amet"


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


DIRTY = [
    {"instruction": "Email  me at ann@example.com  please", "input": "", "output": "ok\r\n\n\n\nsure  thing "},  # 1
    {"instruction": "what color is the sky ?", "input": "", "output": "the sky is blue ."},                  # 2
    {"instruction": "what color is the sky ?", "input": "", "output": "the sky is blue ."},                  # 3 dup
    {"prompt": LONG, "completion": "yes"},                                                                    # 4
    {"prompt": LONG.upper() + "!", "completion": "Yes."},                                                     # 5 near
    '{"prompt": "broken"',                                                                                    # 6
    {"prompt": "   ", "completion": "x"},                                                                     # 7 empty
    {"prompt": "ｆｕｌｌｗｉｄｔｈ\u200b text", "completion": "call +1 555 123 4567 or 10.0.0.7"},              # 8
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}]},                                                # 9
    {"prompt": "the\u00a0same   thing", "completion": "done"},                                                # 10
]


def test_dirty_file_is_cleaned_counted_and_carded(tmp_path):
    src = write(tmp_path / "raw.jsonl", DIRTY)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    stats = prepare(src, tmp_path / "out", PrepareOptions())
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # the input is only read
    assert {k: v for k, v in stats.dropped.items() if v} == {"duplicate": 1, "near_duplicate": 1,
                                                             "malformed_json": 1, "empty_field": 1}
    assert dict(stats.pii) == {"email": 1, "phone": 1, "ip": 1}
    rows = read(tmp_path / "out" / "train.jsonl")
    assert len(rows) == stats.written["train"] == 6
    assert rows[0] == {"instruction": "Email me at [EMAIL] please", "input": "", "output": "ok\n\nsure thing"}
    assert rows[3] == {"prompt": "fullwidth text", "completion": "call [PHONE] or [IP]"}
    assert rows[5] == {"prompt": "the same thing", "completion": "done"}
    card = (tmp_path / "out" / "card.md").read_text()
    for line in ("| duplicate | 1 |", "| near_duplicate | 1 |", "| malformed_json | 1 |", "| empty_field | 1 |",
                 "| email | 1 | `[EMAIL]` |", "raw.jsonl:3: same as", "raw.jsonl:5: like"):
        assert line in card
    assert "ann@example.com" not in card and "555 123" not in card  # examples are shown scrubbed
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["written"] == {"train": 6}


@pytest.mark.parametrize("to", [None, "messages", "alpaca", "prompt_completion"])
def test_prepare_is_idempotent(tmp_path, to):
    src = write(tmp_path / "raw.jsonl", DIRTY)
    prepare(src, tmp_path / "a", PrepareOptions(to=to))
    stats = prepare(tmp_path / "a" / "train.jsonl", tmp_path / "b", PrepareOptions(to=to))
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert sum(stats.dropped.values()) == stats.normalized == stats.scrubbed_records == stats.converted == 0


def test_format_conversion_round_trips_and_drops_what_cannot_convert(tmp_path):
    src = write(tmp_path / "raw.jsonl", [{"instruction": "say hi", "input": "to ann", "output": "hi ann"},
                                         {"messages": [{"role": "user", "content": "a"},
                                                       {"role": "assistant", "content": "b"},
                                                       {"role": "user", "content": "c"},
                                                       {"role": "assistant", "content": "d"}]}])
    stats = prepare(src, tmp_path / "pc", PrepareOptions(to="prompt_completion"))
    assert read(tmp_path / "pc" / "train.jsonl") == [{"prompt": "say hi\n\nto ann", "completion": "hi ann"}]
    assert stats.dropped["not_convertible"] == 1
    prepare(tmp_path / "pc" / "train.jsonl", tmp_path / "m", PrepareOptions(to="messages"))
    assert read(tmp_path / "m" / "train.jsonl") == [{"messages": [{"role": "user", "content": "say hi\n\nto ann"},
                                                                 {"role": "assistant", "content": "hi ann"}]}]
    prepare(tmp_path / "m" / "train.jsonl", tmp_path / "al", PrepareOptions(to="alpaca"))
    assert read(tmp_path / "al" / "train.jsonl") == [{"instruction": "say hi\n\nto ann", "input": "",
                                                      "output": "hi ann"}]


def test_stratified_split_is_deterministic_for_a_seed(tmp_path):
    rows = [{"text": f"review number {i} " + ("good" if i % 4 else "bad"), "label": "pos" if i % 4 else "neg"}
            for i in range(200)]
    src = write(tmp_path / "cls.jsonl", rows)
    opts = PrepareOptions(stage="classify", val_ratio=0.2, seed=3)
    stats = prepare(src, tmp_path / "s1", opts)
    assert stats.labels == {"train": {"neg": 40, "pos": 120}, "validation": {"neg": 10, "pos": 30}}
    prepare(src, tmp_path / "s2", opts)
    prepare(src, tmp_path / "s3", PrepareOptions(stage="classify", val_ratio=0.2, seed=4))
    val = [(tmp_path / s / "validation.jsonl").read_text() for s in ("s1", "s2", "s3")]
    assert val[0] == val[1] != val[2]
    train, held = read(tmp_path / "s1" / "train.jsonl"), read(tmp_path / "s1" / "validation.jsonl")
    assert sorted(map(json.dumps, train + held)) == sorted(map(json.dumps, rows))  # a partition of the input


def test_near_duplicate_threshold_is_configurable(tmp_path):
    a = LONG + " red green blue"
    b = LONG.replace("banana", "melon") + " red green blue"  # one word of 21 changed: 3 of 21 shingles
    src = write(tmp_path / "raw.jsonl", [{"text": a}, {"text": b}])
    loose = prepare(src, tmp_path / "loose", PrepareOptions(stage="pretrain", near_dup_threshold=0.5))
    strict = prepare(src, tmp_path / "strict", PrepareOptions(stage="pretrain", near_dup_threshold=0.95))
    assert (loose.dropped["near_duplicate"], loose.written) == (1, {"train": 1})
    assert (strict.dropped["near_duplicate"], strict.written) == (0, {"train": 2})


def test_output_is_atomic_and_never_clobbered(tmp_path, monkeypatch):
    src = write(tmp_path / "raw.jsonl", DIRTY)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        prepare(src, out, PrepareOptions())
    monkeypatch.setattr(prepare_mod, "render_card", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        prepare(src, tmp_path / "fresh", PrepareOptions())
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw.jsonl"]  # no temp dir left behind


def test_normalisation_keeps_indentation():
    code = "def f():\r\n    return  1   \n\n\n\n# done\u200b"
    assert normalize_text(code) == "def f():\n    return 1\n\n# done"
    assert normalize_text(normalize_text(code)) == normalize_text(code)


def test_cli(tmp_path, capsys):
    src = write(tmp_path / "raw.jsonl", DIRTY)
    assert main(["data", "prepare", str(src), "--output", str(tmp_path / "o"), "--to", "messages",
                 "--val-ratio", "0.3", "--no-progress"]) == 0
    assert "dropped: duplicate 1, empty_field 1, malformed_json 1, near_duplicate 1" in capsys.readouterr().out
    assert len(read(tmp_path / "o" / "train.jsonl")) + len(read(tmp_path / "o" / "validation.jsonl")) == 6
    assert main(["data", "prepare", str(src), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert main(["data", "prepare", str(src), "--output", str(tmp_path / "p"), "--stage", "pretrain",
                 "--to", "alpaca", "--no-progress"]) == 2
