import pytest

import tiny


@pytest.fixture(scope="session")
def bpe_model_dir(tmp_path_factory):
    """The tiny random Llama with SmolLM2's byte-level BPE tokenizer and chat template: GGUF (and llama.cpp)
    know that tokenizer, not the word-level one of the other tests."""
    from transformers import AutoTokenizer

    from tuneforge.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-bpe")
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tok.save_pretrained(path)
    tiny.build_model(path, len(tok))
    return path
