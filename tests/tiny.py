"""A tiny random Llama with a locally built word-level tokenizer and a ChatML chat template, saved like
a hub checkpoint. Every token is a word, a punctuation mark or a whitespace run, so label lists can be
written by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>", "<s>"]
WORDS = (
    "system user assistant an hi hello there how are you fine thanks bye ok yes no the a is of to and what "
    "color sky grass sun snow blue green yellow white red black capital france paris italy rome spain madrid "
    "say answer question name json key value cat dog bird fish one two three four five six seven eight nine ten "
    "Below instruction that describes task Write response appropriately completes request Instruction Response "
    "apple banana cherry lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
).split()
PUNCT = list(".,:;!?#{}[]\"'()-_/")
SPACES = [" ", "  ", "\n", "\n\n", "\n\n\n"]
LETTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def build_tokenizer(path: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in SPECIAL + WORDS + PUNCT + SPACES + LETTERS:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+|\w+|[^\w\s]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    return tok


def build_model(path: Path, vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=3,
        eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
        initializer_range=0.3,  # logits of a 0.02-init tiny model cannot get confident enough to learn
        # hidden 64: bitsandbytes 4-bit quantizes in blocks of 64 input features (qlora tests)
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    return model


def build_tiny(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(path)
    build_model(path, len(tok))
    return path


COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white"}
CAPITALS = {"france": "paris", "italy": "rome", "spain": "madrid"}


def toy_sft_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable task: a fixed answer per question, in the three sft formats."""
    rng = random.Random(seed)
    rows = []
    facts = [(f"what color is the {k} ?", f"the {k} is {v} .") for k, v in COLORS.items()]
    facts += [(f"what is the capital of {k} ?", f"the capital of {k} is {v} .") for k, v in CAPITALS.items()]
    for i in range(n):
        q, a = facts[i % len(facts)] if i < len(facts) else rng.choice(facts)
        kind = i % 3
        if kind == 0:
            rows.append({"instruction": q, "input": "", "output": a})
        elif kind == 1:
            rows.append({"prompt": q, "completion": a})
        else:
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_bert(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny random BERT encoder with a word-level [CLS] ... [SEP] tokenizer (token_type_ids for pairs)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab: dict[str, int] = {}
    for tok in specials + WORDS + PUNCT:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]",
                                  model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=0,
                        initializer_range=0.2,  # like the tiny Llama: random features strong enough to learn from
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


SENTIMENT = {"pos": ["fine", "thanks", "yes", "hello"], "neg": ["no", "bye", "black", "snow"]}
FILLER = "the a is of to and what cat dog bird fish one two three".split()


def toy_cls_rows(n: int, seed: int = 0, labels: tuple[str, ...] = ("pos", "neg"), weights=None) -> list[dict]:
    """A learnable task: the label is given by which cue word appears among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)] if weights is None else rng.choices(labels, weights)[0]
        words = rng.sample(FILLER, 2) + [rng.choice(SENTIMENT[label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def train_checked(cfg):
    """The stage skeleton's LoRA (or other method) setup and the training loop on `cfg` (fp32), asserting that
    every frozen weight stayed as it was. Returns (model, TrainResult, output dir)."""
    import torch

    import tuneforge.stages.skeleton as skeleton
    from tuneforge.train.loop import train

    torch.manual_seed(0)
    run = skeleton.begin(cfg, lambda _m: None)
    data = skeleton.load_data(run)
    out = skeleton.open_output(run)
    model, _ = skeleton.apply_method(run, skeleton.load_base(run))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    result = train(model, data.train, [], cfg, out, "fp32", log=lambda _m: None)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen weight {n} changed"
    return model, result, out
