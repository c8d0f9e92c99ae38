"""TRL 1.16's trainers for the preference objectives beyond dpo, fed tuneforge's tokenization (data.dpo_pairs,
data.kto_rows: the prompt as chat / serve tokenize it, each response through its EOS); TRL's own tokenization
(which re-renders the rows and appends EOS after the template's trailing newline) is skipped.

    trainer = build_trainer(cfg, model, tokenizer, examples, out, precision, callbacks, counter)

orpo: trl.experimental.orpo.ORPOTrainer; simpo and cpo: trl.experimental.cpo.CPOTrainer (loss_type simpo with
cpo_alpha 0, loss_type sigmoid with cpo_alpha); kto: trl.KTOTrainer. One departure: orpo's NLL term is taken
over the chosen response only (the paper's L_SFT), not over prompt + response as TRL 1.16 takes it. With a PEFT
method the kto reference is the adapter-disabled policy (the "ref" adapter copy TRL adds is dropped, as dpo
does); full / freeze: TRL's frozen copy. orpo, simpo and cpo have no reference.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch.nn.functional as F
from transformers import PrinterCallback, TrainerCallback

from tuneforge.config.schema import Config
from tuneforge.data.trl_dataset import trl_dataset
from tuneforge.train import hf_bridge
from tuneforge.train.preference import Counter


def pair_row(example) -> dict:
    """A DpoExample in the layout CPOTrainer / ORPOTrainer's tokenize_row produces (labels -100 on the prompt)."""
    p = example.prompt_ids
    row = {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p)}
    for key, ids in (("chosen", example.chosen_ids), ("rejected", example.rejected_ids)):
        row |= {f"{key}_input_ids": p + ids, f"{key}_attention_mask": [1] * (len(p) + len(ids)),
                f"{key}_labels": [-100] * len(p) + ids}
    return row


def iter_kto_rows(examples: Sequence, batch_size: int, seed: int) -> Iterator[dict]:
    """KtoExample rows shuffled once with the run's seed (TRL samples kto data in order: the KL completions are
    paired within each batch), each with the completion of the row before it in its batch as `KL_completion_ids`
    (TRL's rotation: (x_1, y_n), (x_2, y_1), ...), the mismatched pairs the KL estimate z0 is taken from. Read
    one batch at a time: only the order (an int per row) is held."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # the permutation shuffling the rows themselves would make
    for start in range(0, len(order), batch_size):
        batch = [examples[j].row() for j in order[start : start + batch_size]]
        for i, row in enumerate(batch):
            row["KL_completion_ids"] = batch[i - 1]["completion_ids"]
        yield from batch


def kto_rows(examples: Sequence, batch_size: int, seed: int) -> list[dict]:
    return list(iter_kto_rows(examples, batch_size, seed))


def _trainer_class(stage: str):
    if stage == "kto":
        from trl import KTOTrainer as Base
    elif stage == "orpo":
        from trl.experimental.orpo import ORPOTrainer as Base
    else:
        from trl.experimental.cpo import CPOTrainer as Base

    class Pretokenized(Base):
        counter: Counter | None = None

        def tokenize_row(self, feature, model=None):  # orpo / cpo: rows arrive tokenized (pair_row)
            return feature

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # kto: likewise (kto_rows)
            return dataset

        def concatenated_forward(self, model, batch):
            out = super().concatenated_forward(model, batch)
            if stage != "orpo":
                return out
            # TRL 1.16's ORPO takes the NLL over prompt + response ("as the authors' code"); the paper's L_SFT
            # and every other tuneforge stage train the response only (DESIGN.md 4.3), so it is recomputed here
            # from the chosen logits (position t predicts token t + 1), prompt and padding masked.
            logits, labels = out[2], batch["chosen_labels"][:, 1:]
            labels = F.pad(labels, (0, logits.size(1) - labels.size(1)), value=-100)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=-100)
            return (*out[:4], nll, *out[5:])

        def training_step(self, model, inputs, *args, **kwargs):
            if self.counter is not None:
                masks = [v for k, v in inputs.items() if k in ("attention_mask", "chosen_attention_mask",
                                                                 "rejected_attention_mask")]
                self.counter.tokens += int(sum(m.sum() for m in masks))
                self.counter.pairs += masks[0].size(0)  # pairs (orpo / simpo / cpo) or rows (kto)
            return super().training_step(model, inputs, *args, **kwargs)

    return Pretokenized


def _args(cfg: Config, out: Path, precision: str):
    common = {**hf_bridge.to_trainer_args(cfg, out, precision), "max_length": cfg.training.max_length,
              "trust_remote_code": cfg.trust_remote_code, "disable_dropout": True}
    block = getattr(cfg, cfg.stage)
    if cfg.stage == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, beta=block.beta, loss_type="kto", desirable_weight=block.desirable_weight,
                         undesirable_weight=block.undesirable_weight, train_sampling_strategy="sequential")
    if cfg.stage == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common, beta=block.beta)
    from trl.experimental.cpo import CPOConfig

    if cfg.stage == "simpo":
        return CPOConfig(**common, beta=block.beta, loss_type="simpo", simpo_gamma=block.gamma, cpo_alpha=0.0)
    return CPOConfig(**common, beta=block.beta, loss_type="sigmoid", cpo_alpha=block.cpo_alpha)


def build_trainer(cfg: Config, model, tokenizer, examples: Sequence, out: Path, precision: str,
                  callbacks: list[TrainerCallback], counter: Counter | None = None,
                  log: Callable[[str], None] = print):
    """The stage's TRL trainer on a model the method was already applied to (`examples`: DpoExample pairs,
    or KtoExample rows for kto)."""
    from datasets import Dataset

    args = _args(cfg, out, precision)
    # TRL 1.16 takes a datasets.Dataset: an Arrow file in the token cache, memory-mapped (data.trl_dataset)
    if cfg.stage == "kto":
        bs, seed = cfg.training.batch_size, cfg.seed
        dataset = trl_dataset(examples, "kto", lambda: iter_kto_rows(examples, bs, seed), log,
                              {"batch_size": bs, "seed": seed})
        extra = {"ref_model": None}
    else:
        dataset, extra = trl_dataset(examples, "pairs", lambda: (pair_row(e) for e in examples), log), {}
    # orpo / cpo map the rows three times in __init__ (identities on pre-tokenized rows, but each would write a
    # copy of a file-backed dataset): the trainer is built on the first row and handed the whole file after
    first = dataset if cfg.stage == "kto" or not dataset.cache_files else Dataset.from_list([dataset[0]])
    trainer = _trainer_class(cfg.stage)(model=model, args=args, processing_class=tokenizer,
                                        train_dataset=first, callbacks=callbacks, **extra)
    if first is not dataset:
        trainer.train_dataset = dataset
    trainer.counter = counter
    if "ref" in getattr(model, "peft_config", {}) and getattr(cfg.method, "init", "default") != "pissa":
        model.delete_adapter("ref")  # zero-initialised adapters: the adapter-disabled model is the same base
    trainer.remove_callback(PrinterCallback)  # with the progress bar off it prints every log dict to stdout
    return trainer
