"""Chaining (`model:` naming an earlier run) of a QLoRA run is refused with one clear line: merging it would
fold the adapter into the unquantised base and verify against that, not against the 4-bit policy that was
trained. The alternative the message names (`tuneforge merge RUN`, then the merged directory as model:) works
and reports the quantization difference."""

from __future__ import annotations

import json

import pytest

from tuneforge.errors import ModelError
from tuneforge.export.merge import merge
from tuneforge.models import load_model, load_tokenizer, resolve_model
from tuneforge.stages import STAGES

QLORA = {"name": "qlora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture
def qlora_run(make_config, tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))  # where a chained run would be merged
    return STAGES["sft"](make_config(method=QLORA, training__max_steps=2, eval__before=False,
                                     eval__generate_samples=2))


def test_a_qlora_run_as_model_is_refused_naming_the_alternative(qlora_run, make_config, tmp_path, capsys,
                                                                monkeypatch):
    with pytest.raises(ModelError) as err:
        resolve_model(str(qlora_run))
    message = str(err.value)
    assert str(qlora_run) in message and "4-bit" in message and f"tuneforge merge {qlora_run}" in message
    assert not (tmp_path / "home" / "runs").exists()  # nothing was merged behind the user's back
    with pytest.raises(ModelError, match="4-bit"):
        load_tokenizer(str(qlora_run))

    # through the CLI, as a later stage would meet it: exit 2, one line, nothing written
    import yaml

    from tuneforge import cli

    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)
    chained = make_config(model=str(qlora_run), output_dir=str(tmp_path / "next")).model_dump(mode="json")
    (tmp_path / "next.yaml").write_text(yaml.safe_dump(chained))
    assert cli.main(["train", str(tmp_path / "next.yaml")]) == 2
    err_text = capsys.readouterr().err
    assert "tuneforge merge" in err_text and "Traceback" not in err_text and not (tmp_path / "next").exists()

    # the alternative: merge explicitly (the difference to the trained 4-bit policy is reported), then chain
    merged = merge(qlora_run, tmp_path / "merged")
    report = json.loads((merged / "merge.json").read_text())
    assert report["max_abs_logit_diff"] <= 1e-4 and report["max_abs_logit_diff_vs_trained_4bit"] > 0
    assert resolve_model(str(merged)) == str(merged) and load_model(str(merged)) is not None
