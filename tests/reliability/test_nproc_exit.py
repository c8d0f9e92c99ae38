"""`tuneforge train --nproc N`: a user error inside the ranks exits 2, as it does in one process (torchrun
alone turns every failing rank into 1), and dotted overrides may come after `--nproc`."""

from __future__ import annotations

import pytest
import yaml

from tuneforge.cli import build_parser, parse


def test_overrides_may_follow_nproc():
    args = parse(build_parser(), ["train", "c.yaml", "a.b=1", "--nproc", "2", "training.max_steps=3", "--debug"])
    assert args.nproc == 2 and args.overrides == ["a.b=1", "training.max_steps=3"] and args.debug
    with pytest.raises(SystemExit) as info:  # anything else left over is still refused, exit 2
        parse(build_parser(), ["train", "c.yaml", "--nproc", "2", "stray"])
    assert info.value.code == 2


def test_a_user_error_in_the_ranks_exits_2(make_config, tmp_path, run_cli, capfd):
    """A bad override reaches both ranks (it came after --nproc); each stops with a config error, exit 2. The
    launcher (`tuneforge train --nproc`) runs in this process, as cli.main; the two ranks are real processes."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_config().model_dump(mode="json")))
    code = run_cli(["train", str(path), "--nproc", "2", "training.max_steps=lots"])
    err = capfd.readouterr().err
    assert code == 2, err[-3000:]
    assert "key 'training.max_steps'" in err and "unrecognized arguments" not in err
    assert "Traceback" not in err and "ChildFailedError" not in err
