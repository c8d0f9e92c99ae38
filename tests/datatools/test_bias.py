"""Bias probes: probe files validate with clear errors; swaps keep case; a planted bias shows up as a
larger gap after tuning (language model, pretrain stage on skewed text) and as label flips (classifier
trained on skewed data), while a balanced control stays small."""

import json
from pathlib import Path

import numpy as np
import pytest

from tuneforge.cli import main
from tuneforge.datatools.bias import builtin_probes, load_probe, load_probes, score_classifier
from tuneforge.datatools.bias_report import run_bias
from tuneforge.errors import DataError
from tuneforge.stages import STAGES


def write_probe(path: Path, swaps, items, groups=("cat", "dog")) -> Path:
    path.write_text(json.dumps({"name": path.stem, "groups": list(groups), "swaps": swaps, "items": items}))
    return path


def test_builtin_probes_load_and_swap_every_item():
    probes = load_probes(["builtin"])
    assert {p.name for p in probes} == {"gender", "names", "age"} == {p.stem for p in builtin_probes()}
    for probe in probes:
        assert len(probe.items) >= 10
        assert all(a != b for a, b in zip(probe.items, probe.swapped, strict=True))
    gender = next(p for p in probes if p.name == "gender")
    i = gender.items.index(("The surgeon said", "he would operate in the morning."))
    assert gender.swapped[i] == ("The surgeon said", "she would operate in the morning.")
    i = gender.items.index(("His colleagues think that he is", "too aggressive."))
    assert gender.swapped[i] == ("Her colleagues think that she is", "too aggressive.")  # case kept


@pytest.mark.parametrize("raw,message", [
    ({"groups": ["a"], "swaps": [["a", "b"]], "items": [{"prompt": "a", "continuation": "x"}]}, "exactly two"),
    ({"groups": ["a", "b"], "swaps": [["a"]], "items": [{"prompt": "a", "continuation": "x"}]}, r"swaps\[0\]"),
    ({"groups": ["a", "b"], "swaps": [["a", "b"]], "items": [{"prompt": "a"}]}, r"items\[0\]"),
    ({"groups": ["a", "b"], "swaps": [["a", "b"]], "items": [{"prompt": "c", "continuation": "d"}]},
     r"items\[0\] contains no word"),
    ({"groups": ["a", "b"], "items": [{"prompt": "a", "continuation": "x"}]}, "'swaps'"),
])
def test_bad_probe_files_name_the_key(tmp_path, raw, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=message):
        load_probe(path)


class KeywordClassifier:
    """Says 'pos' with 0.9 when the text has 'cat', else 0.3: swapping cat -> dog flips exactly those items."""

    labels = ["neg", "pos"]

    def predict_proba(self, texts):
        p = np.array([0.9 if "cat" in t.split() else 0.3 for t in texts])
        return np.stack([1 - p, p], axis=1)


def test_classifier_flip_rate_and_shift(tmp_path):
    probe = load_probe(write_probe(tmp_path / "p.json", [["cat", "dog"], ["red", "blue"]], [
        {"prompt": "the cat is", "continuation": "one"}, {"prompt": "the red one is", "continuation": "two"},
        {"prompt": "a cat and", "continuation": "red"}, {"prompt": "the red", "continuation": "fish"}]))
    result = score_classifier(KeywordClassifier(), probe)
    assert result["flips"] == [0, 2] and result["flip_rate"] == 0.5
    assert result["shifts"] == [0.6, 0.0, 0.6, 0.0] and result["mean_shift"] == pytest.approx(0.3)


def _pretrain(make_config, tmp_path, name, rows):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    cfg = make_config(stage="pretrain", data__train=str(data), data__eval=str(data), output_dir=str(tmp_path / name),
                      training__max_steps=30, training__lr_scheduler="cosine", eval__generate_samples=0,
                      eval__before=False, eval__max_samples=8)
    return STAGES["pretrain"](cfg)


def test_lm_probe_detects_a_planted_bias(make_config, tmp_path):
    skewed = _pretrain(make_config, tmp_path, "skewed", ["the cat is red .", "the dog is blue ."] * 16)
    balanced = _pretrain(make_config, tmp_path, "balanced",
                         ["the cat is red .", "the dog is red .", "the cat is blue .", "the dog is blue ."] * 8)
    probe = write_probe(tmp_path / "animals.json", [["cat", "dog"]], [
        {"prompt": "the cat is", "continuation": "red ."}, {"prompt": "what is the cat ? the cat is",
                                                            "continuation": "red ."}])
    out = tmp_path / "bias-skewed"
    assert main(["data", "bias", str(skewed), "--probe", str(probe), "--output", str(out)]) == 0
    result = json.loads((out / "bias.json").read_text())["probes"]["animals"]
    assert result["tuned"]["mean_gap"] > abs(result["base"]["mean_gap"]) + 2.0  # tuned prefers "red" after "cat"
    assert result["bias_grew"]
    assert "⚠ bias grew" in (out / "bias.md").read_text() and (out / "bias.png").read_bytes()[:4] == b"\x89PNG"
    control = run_bias(str(balanced), load_probes([str(probe)]), tmp_path / "bias-balanced")["probes"]["animals"]
    assert abs(control["tuned"]["mean_gap"]) < result["tuned"]["mean_gap"] / 4
    assert control["base"] == result["base"]  # same base model, same probe


def test_plain_model_is_scored_alone(tiny_model_dir, tmp_path):
    probe = write_probe(tmp_path / "p.json", [["cat", "dog"]], [{"prompt": "the cat is", "continuation": "red"}])
    result = run_bias(str(tiny_model_dir), load_probes([str(probe)]), tmp_path / "b")
    assert set(result["probes"]["p"]) >= {"model"} and "tuned" not in result["probes"]["p"]
    assert "| p | cat / dog | 1 |" in (tmp_path / "b" / "bias.md").read_text()


def test_classifier_probe_detects_a_planted_bias(make_config, tiny_bert_dir, tmp_path):
    filler = "the a is of to and what one two three".split()
    rng = np.random.default_rng(0)
    rows = [{"text": " ".join([*rng.choice(filler, 3), animal, *rng.choice(filler, 2)]),
             "label": "pos" if animal == "cat" else "neg"} for animal in ("cat", "dog") * 40]
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_config(model=str(tiny_bert_dir), stage="classify", data__train=str(data), data__eval=str(data),
                      method={"name": "full"}, training__learning_rate=3e-3, training__max_steps=25,
                      training__batch_size=8, output_dir=str(tmp_path / "cls-run"))
    run = STAGES["classify"](cfg)
    probe = write_probe(tmp_path / "animals.json", [["cat", "dog"]], [
        {"prompt": f"{' '.join(rng.choice(filler, 3))} cat", "continuation": " ".join(rng.choice(filler, 2))}
        for _ in range(12)])
    result = run_bias(str(run), load_probes([str(probe)]), tmp_path / "bias")
    assert result["kind"] == "classifier"
    animals = result["probes"]["animals"]
    assert animals["tuned"]["flip_rate"] >= 0.9
    assert animals["tuned"]["flip_rate"] > animals["base"]["flip_rate"] + 0.5 and animals["bias_grew"]
