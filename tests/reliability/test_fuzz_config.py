"""Property-based fuzzing of the config loader (hypothesis, derandomized): any YAML file and any list of
dotted overrides ends in a valid Config or a ConfigError naming the file (and line) or the override key,
never another exception. Each property counts the inputs it tried (printed with -s; see the report).

    HF_HUB_OFFLINE=1 python -m pytest -q -s tests/reliability/test_fuzz_config.py
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.config.load import dump_config, load_config
from tuneforge.config.schema import Config
from tuneforge.errors import ConfigError

FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TRIED: Counter[str] = Counter()
_SEQ = itertools.count()
_DIR = Path(tempfile.mkdtemp(prefix="tf-fuzz-config-"))
atexit.register(shutil.rmtree, _DIR, True)  # hypothesis runs many inputs per test: one scratch dir

VALID = {
    "model": "smollm2-135m-instruct", "stage": "sft",
    "method": {"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
    "data": {"train": "train.jsonl", "eval": None, "format": "auto"},
    "training": {"max_steps": 10, "learning_rate": 1e-4, "batch_size": 2, "report_to": ["tensorboard"]},
    "eval": {"before": True, "metrics": ["exact_match"]},
    "output_dir": "runs/x", "seed": 1,
}
# Every dotted key of the schema plus neighbours that are not keys, so mutations hit real validation paths.
KEYS = sorted({
    "model", "stage", "method", "method.name", "method.r", "method.alpha", "method.target_modules", "method.size",
    "method.num_virtual_tokens", "method.last_n_layers", "method.patterns", "data", "data.train", "data.eval",
    "data.format", "data.template", "data.labels", "data.eval_split", "data.label_field", "training",
    "training.max_steps", "training.epochs", "training.learning_rate", "training.batch_size",
    "training.overlength", "training.class_weights", "training.report_to", "training.mlflow_tracking_uri",
    "training.precision", "eval", "eval.metrics", "eval.max_new_tokens", "output_dir", "seed", "resume",
    "resume_allow_changes", "trust_remote_code", "dpo", "dpo.beta", "ppo", "ppo.rewards", "grpo",
    "grpo.rewards", "grpo.num_generations", "overwrite", "training.learnin_rate", "metod", "data.trian", "",
})
STAGES = ["sft", "pretrain", "classify", "reward", "dpo", "ppo", "grpo", "sft ", "SFT", "x"]
METHODS = ["full", "freeze", "lora", "qlora", "ia3", "adapter", "prefix", "prompt", "lora2", ""]

text = st.text(max_size=20)  # any unicode, NUL and surrogates excluded by YAML's dumper only when needed
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    text, st.sampled_from(STAGES + METHODS + ["1e-4", "auto", "all-linear", "-1", "nan"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), text), inner, max_size=4)),
    max_leaves=12)


def _write(data: bytes) -> Path:
    path = _DIR / f"c{next(_SEQ)}.yaml"
    path.write_bytes(data)
    return path


def _load(path: Path, overrides: list[str] | None = None) -> Config | None:
    """The property: a Config, or a ConfigError that names the file or the override it is about."""
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        msg = str(exc)
        assert str(path) in msg or msg.startswith("override "), msg
        TRIED["config: ... ended in a ConfigError"] += 1
        return None
    assert isinstance(cfg, Config)
    TRIED["config: ... ended in a valid Config"] += 1
    assert load_config(_write(dump_config(cfg).encode()), []) == cfg  # what a run saves loads back the same
    return cfg


def _set(raw: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(data):
    TRIED["config: random bytes"] += 1
    _load(_write(data))


@FUZZ
@given(values)
def test_any_yaml_document(doc):
    TRIED["config: random YAML documents"] += 1
    try:
        text_ = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:  # e.g. a string with a character YAML cannot represent
        text_ = repr(doc)
    _load(_write(text_.encode("utf-8", "surrogatepass")))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), values, st.booleans()), max_size=5))
def test_mutated_valid_config(edits):
    """Start from a valid config, set or delete real keys to arbitrary values."""
    TRIED["config: mutated valid configs"] += 1
    raw = yaml.safe_load(yaml.safe_dump(VALID))
    for key, value, delete in edits:
        if not key:
            continue
        if delete:
            head, _, last = key.rpartition(".")
            parent = raw
            for part in head.split(".") if head else []:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict):
                parent.pop(last, None)
        else:
            _set(raw, key, value)
    try:
        text_ = yaml.safe_dump(raw, allow_unicode=True)
    except yaml.YAMLError:
        return
    _load(_write(text_.encode("utf-8", "surrogatepass")))


override_values = st.one_of(text, st.sampled_from(["10", "1e-4", "[a, b]", "{a: 1}", "null", "nan", "inf", "'x",
                                                   "[", "sft", "full", "true", "-3", "0x10", "~", "&a [*a]"]))
override_keys = st.one_of(st.sampled_from(KEYS), text,
                          st.lists(st.sampled_from(["training", "method", "data", "x", "", "r", "name"]),
                                   min_size=1, max_size=4).map(".".join))


@FUZZ
@given(st.lists(st.one_of(st.tuples(override_keys, override_values).map("=".join), text), max_size=5))
def test_any_overrides(overrides):
    TRIED["config: random dotted overrides"] += 1
    path = _DIR / "valid.yaml"
    if not path.is_file():
        path.write_text(yaml.safe_dump(VALID))
    _load(path, overrides)


def test_hostile_yaml_is_a_config_error(tmp_path):
    """Hand-picked documents a random generator rarely builds: alias bombs, recursion, tags, deep nesting."""
    docs = {
        "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nmodel: *c\nstage: sft\n",
        "recursive.yaml": "model: &m [*m]\n",
        "tag.yaml": "model: !!python/object/apply:os.system ['touch pwned']\n",
        "deep.yaml": "model: " + "[" * 5000 + "]" * 5000 + "\n",
        "multi.yaml": "model: a\n---\nmodel: b\n",
        "bom.yaml": "\ufeffmodel: x\n",
        "keys.yaml": "? [a, b]\n: 1\n1: 2\nnull: 3\n",
    }
    for doc in docs.values():
        TRIED["config: hostile documents"] += 1
        _load(_write(doc.encode()))
    assert not Path("pwned").exists()


PROPERTIES = {"config: random bytes": test_any_bytes, "config: random YAML documents": test_any_yaml_document,
              "config: mutated valid configs": test_mutated_valid_config,
              "config: random dotted overrides": test_any_overrides,
              "config: hostile documents": lambda: test_hostile_yaml_is_a_config_error(None)}


def test_zz_report_counts():
    """Runs last in this file: prints the inputs each property tried (the figures in docs/reliability.md).
    Run alone (or with -k), it first runs the properties that did not run, so it never passes on no inputs."""
    for name, prop in PROPERTIES.items():
        if not TRIED[name]:
            prop()
    print("\n" + "\n".join(f"FUZZ {k}: {v} inputs" for k, v in sorted(TRIED.items())))
    assert all(TRIED[name] > 0 for name in PROPERTIES), TRIED
    assert all(TRIED[name] >= 100 for name in PROPERTIES if name != "config: hostile documents"), TRIED
    assert TRIED["config: ... ended in a ConfigError"] > 0 and TRIED["config: ... ended in a valid Config"] > 0
