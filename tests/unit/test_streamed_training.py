"""Training on a corpus read from the token cache: the loop reads only the sequences of the steps it takes
(never the whole corpus), its seeded order comes from one permutation per epoch (4 bytes per sequence), and a
run resumed from a checkpoint reads the same sequences and reproduces the uninterrupted run's losses."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny
from tuneforge.data.batching import epoch_microbatches, epoch_order
from tuneforge.data.token_cache import CachedExamples, load_cached_examples
from tuneforge.methods import METHODS, MethodContext
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.loop import train


class Reads(CachedExamples):
    """Counts which sequences were read."""

    def __init__(self, inner: CachedExamples):
        super().__init__(inner.reader, inner.index)
        self.read: list[int] = []

    def __getitem__(self, i):
        self.read.append(i)
        return super().__getitem__(i)


@pytest.fixture
def streamed(tmp_path, make_config, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNEFORGE_DATA_CACHE", raising=False)  # the cache under this home
    rows = [{"text": f"the {k} is {v} . " * (3 + i % 9)} for i, (k, v) in enumerate(list(tiny.COLORS.items()) * 40)]
    train_file = tiny.write_jsonl(tmp_path / "corpus.jsonl", rows)

    def config(name: str, **extra):
        return make_config(stage="pretrain", data__train=str(train_file), data__eval=None,
                           output_dir=str(tmp_path / name), training__max_steps=6, training__save_steps=3,
                           training__batch_size=2, training__max_length=32, training__report_to=[],
                           method__dropout=0.1, **extra)

    cfg = config("unused")
    examples, _, _ = load_cached_examples(cfg, load_tokenizer(cfg.model), cfg.data.train, log=lambda _m: None)
    torch.manual_seed(0)
    base = METHODS["lora"].apply(load_model(cfg.model), cfg.method, MethodContext(cfg.model))

    def run(name: str, **extra):
        data = Reads(examples)
        c = config(name, **extra)
        torch.manual_seed(1234)
        return train(copy.deepcopy(base), data, [], c, Path(c.output_dir), "fp32", log=lambda _m: None), data

    return run, len(examples)


def test_the_loop_reads_only_the_steps_sequences_and_resumes_exactly(streamed, tmp_path):
    run, n = streamed
    reference, reads = run("reference")
    assert n > 100 and len(reads.read) == 6 * 2  # 6 steps of 2: nothing else of the corpus was read
    order = epoch_order(n, 0, 0)
    assert reads.read == order[:12].tolist()  # the seeded epoch order, from its start
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "reference", out)
    shutil.rmtree(list_checkpoints(out / "checkpoints")[-1])  # stopped after step 3
    resumed, again = run("resumed", resume="auto")
    assert resumed.resumed_from.endswith("step-0000003") and again.read == reads.read[6:]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in reference.history], abs=1e-6)


def test_an_epoch_order_is_one_int32_permutation_cut_on_demand():
    micro = epoch_microbatches(1_000_003, 8, seed=3, epoch=1)
    assert micro is not epoch_microbatches(1_000_003, 8, seed=3, epoch=1)
    assert micro.order is epoch_order(1_000_003, 3, 1)  # computed once per epoch, not per step
    assert micro.order.dtype == np.int32 and micro.order.nbytes == 4 * 1_000_003
    assert len(micro) == 125_001 and len(micro[-1]) == 3
    assert micro[2:4] == [micro[2], micro[3]] and micro[0] == micro.order[:8].tolist()
    g = torch.Generator().manual_seed(3 * 1_000_003 + 1)  # the order every earlier version walked
    assert micro[5] == torch.randperm(1_000_003, generator=g)[40:48].tolist()
