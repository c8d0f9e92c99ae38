"""Secrets (tokens, API keys, passwords) in the environment or in config values never reach stdout/stderr,
train_log.jsonl, config.yaml, metrics.json, report.md/html, TensorBoard events or MLflow params: a real
tiny run is grepped file by file (binary included). Saved configs mask them and still load; config errors
do not echo them.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/reliability/test_secrets.py
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
import torch
import yaml

from tuneforge.cli import main
from tuneforge.config.load import dump_config, load_config
from tuneforge.config.schema import Config
from tuneforge.errors import ConfigError
from tuneforge.secrets import REDACTED, is_secret_key, redact_config, redact_text

ENV_SECRETS = {
    "HF_TOKEN": "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "OPENAI_API_KEY": "sk-proj-Zy9Xw8Vu7Ts6Rq5Po4Nm3",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-Q7r8S9t0",
    "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
    "TUNEFORGE_API_KEY": "tf-serve-key-5551212",
}
URI_PASSWORD = "Uri-Passw0rd-9931"
URI = f"https://alice:{URI_PASSWORD}@mlflow.example.com/"
KWARG_SECRETS = {"api_key": "kw-api-key-77441", "auth_token": "kw-token-88552", "headers": {"password": "kw-pw-99663"}}


def _all_secrets() -> list[str]:
    return [*ENV_SECRETS.values(), URI_PASSWORD, "kw-api-key-77441", "kw-token-88552", "kw-pw-99663"]


def _leaks(data: bytes, secrets: list[str]) -> list[str]:
    forms = {s: {s, urllib.parse.quote(s, safe=""), s.encode().hex()} for s in secrets}
    return [s for s, variants in forms.items() if any(v.encode() in data for v in variants)]


def _scan(root: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Every file under root, read as bytes: which secrets it contains (in plain, URL-encoded or hex form)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and (hits := _leaks(path.read_bytes(), secrets)):
            found[str(path.relative_to(root))] = hits
    return found


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> tuple[str, Path]:
    """One local SQLite MLflow store for the module (creating its tables costs seconds)."""
    path = tmp_path_factory.mktemp("mlflow") / "store.db"
    return f"sqlite:///{path}", path


@pytest.fixture
def env_secrets(monkeypatch):
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)


def test_a_real_run_writes_no_secret_anywhere(tmp_path, make_config, tiny_model_dir, env_secrets, monkeypatch, capsys,
                                              mlflow_store):
    """sft + LoRA on the tiny model, TensorBoard and MLflow on, an MLflow URI with a password in the config,
    tokens in the environment. The MLflow transport is redirected to a local SQLite store (the test's stand-in
    for the remote server), so the params MLflow received can be read back."""
    import mlflow
    from safetensors.torch import load_file

    from tuneforge.evaluation.generate import generate
    from tuneforge.runs import load_run

    out, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # MLflow's default artifact root is ./mlruns: scanned too
    store, store_file = mlflow_store
    asked: list[str] = []
    real_set_uri = mlflow.set_tracking_uri
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: (asked.append(uri), real_set_uri(store))[1])
    cfg = make_config(output_dir=str(out), training__max_steps=8, training__save_steps=4,
                      training__report_to=["tensorboard", "mlflow"], training__mlflow_experiment="real-run",
                      eval={"generate_samples": 2, "max_new_tokens": 8})
    path = tmp_path / "train.yaml"
    path.write_text(dump_config(cfg))
    assert main(["train", str(path), f"training.mlflow_tracking_uri={URI}"]) == 0
    captured = capsys.readouterr()

    assert asked == [URI]  # the secret was used where it is needed ...
    assert _leaks((captured.out + captured.err).encode(), _all_secrets()) == []  # ... and shown nowhere
    assert _scan(out, _all_secrets()) == {} and _scan(cwd, _all_secrets()) == {}
    assert _leaks(store_file.read_bytes(), _all_secrets()) == []  # what the MLflow server stored
    expected = {"events.out.tfevents", "train_log.jsonl", "config.yaml", "metrics.json", "report.md", "state.json",
                "README.md", "template.json"}  # (sft writes no report.html; eval's is covered by redact_text)
    written = {p.name if not p.name.startswith("events.out.tfevents") else "events.out.tfevents"
               for p in out.rglob("*")}
    assert expected <= written  # the scan covered every kind of output the promise names
    scanned = [p for p in [*out.rglob("*"), *cwd.rglob("*"), store_file] if p.is_file()]
    print(f"\nSECRETS scanned {len(scanned)} files, {sum(p.stat().st_size for p in scanned)} bytes, "
          f"for {len(_all_secrets())} secrets")
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("real-run").experiment_id])
    assert run.data.params["training.mlflow_tracking_uri"] == f"https://alice:{REDACTED}@mlflow.example.com/"
    assert run.data.metrics["train/loss"] > 0
    saved = load_config(out / "config.yaml")  # the redacted config still loads (chaining, load_run use it)
    assert saved.training.mlflow_tracking_uri == f"https://alice:{REDACTED}@mlflow.example.com/"
    assert (out / "config.yaml").read_text().startswith("# Secrets redacted")

    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-2:]) < sum(losses[:2])
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: trained
    model, tokenizer, _ = load_run(out)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    for name, param in model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    tuned = generate(model, tokenizer, [g["prompt"] for g in generations], 8, "fp32")
    assert tuned == [g["tuned"] for g in generations]


def _ppo_config(tmp_path: Path, **training) -> Config:
    return Config.model_validate({
        "model": "m", "stage": "ppo", "data": {"train": "t.jsonl", "system_prompt": "be brief"},
        "ppo": {"rewards": [{"function": "tuneforge.rl.rewards:exact_match", "kwargs": KWARG_SECRETS},
                            {"function": "tuneforge.rl.rewards:contains", "kwargs": {"field": "answer"}}],
                "max_new_tokens": 16},
        "training": {"mlflow_tracking_uri": URI, **training}, "eval": {"max_new_tokens": 12},
        "output_dir": str(tmp_path / "out")})


def test_saved_config_masks_secrets_and_still_loads(tmp_path, env_secrets):
    cfg = _ppo_config(tmp_path)
    text = dump_config(cfg)
    assert _leaks(text.encode(), _all_secrets()) == []
    assert text.startswith("# Secrets redacted")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    back = load_config(path)
    kwargs = back.ppo.rewards[0].kwargs
    assert kwargs == {"api_key": REDACTED, "auth_token": REDACTED, "headers": {"password": REDACTED}}
    assert back.ppo.rewards[1].kwargs == {"field": "answer"}  # not secret-named: kept
    assert back.eval.max_new_tokens == 12 and back.ppo.max_new_tokens == 16  # "tokens" counts are not secrets
    assert back.data.system_prompt == "be brief"
    plain = Config.model_validate({"model": "m", "stage": "sft", "data": {"train": "t.jsonl"}, "output_dir": "o"})
    assert not dump_config(plain).startswith("#")  # the header only when something was hidden


def test_mlflow_params_mask_secrets(tmp_path, monkeypatch, mlflow_store):
    """The params tuneforge logs to MLflow for a config with reward kwargs and URI credentials."""
    import mlflow

    from tuneforge.train.metric_log import open_metric_log

    monkeypatch.chdir(tmp_path)
    store, store_file = mlflow_store
    real_set_uri = mlflow.set_tracking_uri
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: real_set_uri(store))
    cfg = _ppo_config(tmp_path, report_to=["mlflow"], mlflow_experiment="ppo-params")
    (tmp_path / "out").mkdir()
    log = open_metric_log(cfg, tmp_path / "out", None)
    log.add_scalar("train/loss", 1.0, 1)
    log.close()
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ppo-params").experiment_id])
    params = run.data.params
    assert _leaks(json.dumps(params).encode(), _all_secrets()) == [] and _scan(tmp_path, _all_secrets()) == {}
    assert _leaks(store_file.read_bytes(), _all_secrets()) == []
    assert "ppo.rewards" in params and params["training.mlflow_tracking_uri"].startswith("https://alice:***@")


@pytest.mark.parametrize("doc, key", [
    ({"training": {"mlflow_tracking_uri": [URI]}}, "training.mlflow_tracking_uri"),
    ({"training": {"report_to": URI}}, "training.report_to"),
    ({"training": {"batch_size": ENV_SECRETS["OPENAI_API_KEY"]}}, "training.batch_size"),
    ({"model": [ENV_SECRETS["HF_TOKEN"]]}, "model"),
    ({"stage": "ppo", "ppo": {"rewards": KWARG_SECRETS}}, "ppo.rewards"),
    ({"stage": "ppo", "ppo": {"rewards": [{"function": "m:f", "kwargs": KWARG_SECRETS, "weight": "heavy"}]}},
     "ppo.rewards.0.weight"),
    ({"stage": "ppo", "ppo": {"rewards": [{"function": "m:f", "kwargs": [KWARG_SECRETS]}]}}, "ppo.rewards.0.kwargs"),
])
def test_config_errors_name_the_key_but_not_the_secret(tmp_path, env_secrets, doc, key):
    raw = {"model": "m", "stage": "sft", "data": {"train": "t.jsonl"}, "output_dir": "o"}
    for k, v in doc.items():
        raw[k] = {**raw[k], **v} if isinstance(raw.get(k), dict) else v
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"'{key}'" in str(err.value) and str(path) in str(err.value)
    assert _leaks(str(err.value).encode(), _all_secrets()) == []


@pytest.mark.parametrize("override", [f"training.hf_token={ENV_SECRETS['HF_TOKEN']}",
                                      f"data.train.x={ENV_SECRETS['OPENAI_API_KEY']}",
                                      f"training.batch_size={URI}", f"{ENV_SECRETS['WANDB_API_KEY']}"])
def test_override_errors_do_not_echo_secrets(tmp_path, env_secrets, override):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "stage": "sft", "data": {"train": "t.jsonl"}, "output_dir": "o"}))
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert _leaks(str(err.value).encode(), _all_secrets()) == []


def test_cli_error_output_has_no_secret(tmp_path, env_secrets, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "stage": "sft", "data": {"train": "t.jsonl"}, "output_dir": "o",
                                    "training": {"mlflow_tracking_uri": {"uri": URI}}}))
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert "training.mlflow_tracking_uri" in captured.err
    assert _leaks((captured.out + captured.err).encode(), _all_secrets()) == []


@pytest.mark.parametrize("name, secret", [
    ("api_key", True), ("HF_TOKEN", True), ("mlflow_tracking_password", True), ("apiKey", True), ("hf_token", True),
    ("OPENAI_API_KEY", True), ("secret", True), ("Authorization", True), ("x-api-key", True), ("passwd", True),
    ("max_new_tokens", False), ("num_virtual_tokens", False), ("keys", False), ("label_field", False),
    ("tokenizer", False), ("TOKENIZERS_PARALLELISM", False), ("monkey", False), (3, False),
])
def test_secret_key_names(name, secret):
    assert is_secret_key(name) is secret


def test_redact_text_and_config(env_secrets):
    assert redact_text(URI) == f"https://alice:{REDACTED}@mlflow.example.com/"
    assert redact_text("git clone https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/x") == \
        f"git clone https://{REDACTED}@github.com/x"
    assert redact_text("GET https://h/x?api_key=abc123&page=2") == f"GET https://h/x?api_key={REDACTED}&page=2"
    assert redact_text(f"token {ENV_SECRETS['WANDB_API_KEY']} here") == f"token {REDACTED} here"
    assert redact_text("plain words, https://example.com/path and user@example.com") == \
        "plain words, https://example.com/path and user@example.com"
    raw = {"a": {"api_key": "x1", "n_tokens": 5, "list": [{"password": ["p", 3]}]}, "u": URI, "api_token": None}
    assert redact_config(raw) == {"a": {"api_key": REDACTED, "n_tokens": 5, "list": [{"password": [REDACTED, 3]}]},
                                  "u": f"https://alice:{REDACTED}@mlflow.example.com/", "api_token": None}


def test_compare_writes_no_secret_and_hands_it_to_each_run_through_the_environment(tmp_path, monkeypatch):
    """`tuneforge compare` writes OUTPUT-compare/<method>.yaml for each method's `tuneforge train` process:
    masked like a run's config.yaml, the masked values passed in the child's environment, where load_config
    puts them back (and only where the file holds their masked form)."""
    import tuneforge.compare as compare_module
    from tuneforge.secrets import SECRETS_ENV

    started: list[tuple[list[str], dict]] = []

    class Child:  # stands in for `python -m tuneforge train FILE`: records how it was started, then fails
        def __init__(self, cmd, env, **_kwargs):
            started.append((cmd, env))
            self.stdout, self.returncode = iter(["error: stand-in\n"]), 1

        def wait(self):
            return 1

    monkeypatch.setattr(compare_module.subprocess, "Popen", Child)
    cfg = _ppo_config(tmp_path)
    out = tmp_path / "out-compare"
    rows = compare_module.compare(cfg, ["lora"], {}, out)
    assert rows[0]["status"].startswith("failed") and len(started) == 1
    assert _scan(out, _all_secrets()) == {}  # <method>.yaml, config.yaml, compare.json, compare.md, the log
    (cmd, env), path = started[0], out / "lora.yaml"
    assert cmd[-2:] == ["train", str(path)] and path.read_text().startswith("# Secrets redacted")
    assert _leaks(" ".join(cmd).encode(), _all_secrets()) == []  # not on the command line either

    masked = load_config(path)
    assert masked.training.mlflow_tracking_uri == f"https://alice:{REDACTED}@mlflow.example.com/"
    monkeypatch.setenv(SECRETS_ENV, env[SECRETS_ENV])  # what the child process sees
    child = load_config(path)
    assert child.training.mlflow_tracking_uri == URI
    assert child.ppo.rewards[0].kwargs == KWARG_SECRETS
    assert child.model_dump(exclude={"output_dir", "overwrite"}) == cfg.model_dump(exclude={"output_dir", "overwrite"})
    # an override still wins over a restored value
    assert load_config(path, ["training.mlflow_tracking_uri=file:///x"]).training.mlflow_tracking_uri == "file:///x"


def test_the_working_directory_is_not_a_secret(tmp_path, monkeypatch):
    """$PWD / $OLDPWD hold paths, not passwords: masking them turned every path under the working directory
    into '***' in saved configs, so the run could not be loaded again. A config key named pwd stays secret."""
    from tuneforge.secrets import env_secrets, redact_config, redact_text

    where = str(tmp_path / "project")
    monkeypatch.setenv("PWD", where)
    monkeypatch.setenv("OLDPWD", where + "-old")
    monkeypatch.setenv("DB_PASSWORD", "hunter2-hunter2")
    assert env_secrets() == ["hunter2-hunter2"]
    assert redact_text(f"model: {where}/runs/sft") == f"model: {where}/runs/sft"
    assert redact_config({"model": f"{where}/runs/sft", "pwd": "letmein"}) == {"model": f"{where}/runs/sft",
                                                                             "pwd": "***"}
