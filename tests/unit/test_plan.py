"""`tuneforge plan`: parameter counts (the real methods applied on the meta device) against peft and known
model totals, the config-key command line, memory arithmetic, and the activation formula against what
autograd really keeps (saved-tensor hooks) on a tiny Llama."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.config.schema import METHOD_CONFIGS
from tuneforge.errors import ConfigError, UserError
from tuneforge.methods import METHODS, MethodContext, count_params
from tuneforge.plan import build_meta_model, estimate, load_arch_config, run_plan
from tuneforge.plan.memory import NF4_BYTES_PER_PARAM

KNOWN_TOTALS = {  # from the published checkpoints
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512,
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "smollm2-1.7b": 1_711_376_384,
}
H, INTER, L, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 256
KV = KV_HEADS * H // HEADS


def tiny_config(tied: bool = False) -> LlamaConfig:
    return LlamaConfig(hidden_size=H, intermediate_size=INTER, num_hidden_layers=L, num_attention_heads=HEADS,
                       num_key_value_heads=KV_HEADS, vocab_size=VOCAB, tie_word_embeddings=tied)


def peft_line(trainable: int, total: int) -> str:
    """peft's print_trainable_parameters format."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def test_llama2_7b_lora_reproduces_peft_published_count():
    r = estimate("llama-2-7b", "lora", batch_size=1, seq_len=8, r=8, target_modules=["q_proj", "v_proj"])
    assert peft_line(r["trainable_params"], r["total_params"]) == (
        "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622")
    assert r["counted_by"] == "tuneforge's lora applied on the meta device"
    assert r["method_params"]["target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize("name", sorted(KNOWN_TOTALS))
def test_arch_totals_and_full_trains_everything(name):
    r = estimate(name, "full", batch_size=1, seq_len=8)
    assert r["total_params"] == r["trainable_params"] == KNOWN_TOTALS[name]


def test_distilbert_backbone_total_and_classifier_head():
    meta = build_meta_model(load_arch_config("distilbert"))
    assert meta.task == "SEQ_CLS"
    assert sum(p.numel() for p in meta.model.base_model.parameters()) == 66_362_880  # bare DistilBertModel
    assert all(p.device.type == "meta" for p in meta.model.parameters())  # nothing allocated
    # + pre_classifier (768*768+768) + classifier (768*2+2): what `classify` would train
    assert estimate("distilbert", "full", batch_size=1, seq_len=8)["total_params"] == 66_362_880 + 590_592 + 1_538


@pytest.mark.parametrize("alias,stem", [("LLAMA-2-7B", "llama-2-7b"), ("smollm2-135m-instruct", "smollm2-135m"),
                                        ("distilbert", "distilbert-base-uncased"), ("Mistral-7B", "mistral-7b-v0.1"),
                                        ("HuggingFaceTB/SmolLM2-135M", "smollm2-135m")])
def test_aliases(alias, stem):
    assert load_arch_config(alias).name_or_path == stem


def test_local_directory_with_config_json(tiny_model_dir):
    r = estimate(str(tiny_model_dir), "full", batch_size=1, seq_len=8)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    assert r["total_params"] == sum(p.numel() for p in model.parameters())


def test_unknown_model_names_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="llama-2-7b.*smollm2-135m") as err:
        run_plan(["model=gpt-17"])
    assert err.value.exit_code == 2
    with pytest.raises(UserError, match="no config.json"):
        load_arch_config(str(tmp_path))


def _real_peft_counts(config: LlamaConfig, peft_config) -> tuple[int, int]:
    torch.manual_seed(0)
    model = peft.get_peft_model(LlamaForCausalLM(config), peft_config)
    return model.get_nb_trainable_parameters()


# method, estimate kwargs (the config's keys), the peft config tuneforge means, the analytic count from docs/plan.md
PEFT_CASES = [
    ("lora", {}, lambda: peft.LoraConfig(r=8, task_type="CAUSAL_LM"), L * 8 * ((H + H) + (H + KV))),
    ("lora", {"target_modules": "all-linear"}, lambda: peft.LoraConfig(r=8, target_modules="all-linear"),
     L * 8 * (2 * (H + H) + 2 * (H + KV) + 2 * (H + INTER) + (INTER + H))),
    ("lora", {"use_dora": True}, lambda: peft.LoraConfig(r=8, use_dora=True), L * (8 * ((H + H) + (H + KV)) + H + KV)),
    ("ia3", {}, lambda: peft.IA3Config(task_type="CAUSAL_LM"), L * (KV + KV + INTER)),  # k, v out; down_proj in
    ("prefix", {}, lambda: peft.PrefixTuningConfig(num_virtual_tokens=16, task_type="CAUSAL_LM"), 16 * L * 2 * KV),
    ("prompt", {}, lambda: peft.PromptTuningConfig(num_virtual_tokens=16, task_type="CAUSAL_LM"), 16 * H),
]


@pytest.mark.parametrize("method,kwargs,make_peft,analytic", PEFT_CASES,
                         ids=[f"{c[0]}{'-' + '-'.join(map(str, c[1].values())) if c[1] else ''}" for c in PEFT_CASES])
def test_tiny_llama_counts_equal_real_peft_and_formula(method, kwargs, make_peft, analytic):
    r = estimate(tiny_config(), method, batch_size=1, seq_len=8, **kwargs)
    assert (r["trainable_params"], r["total_params"]) == _real_peft_counts(tiny_config(), make_peft())
    assert r["trainable_params"] == analytic


def test_qlora_trains_what_lora_trains_on_a_4bit_base():
    lora = estimate("llama-2-7b", "lora", batch_size=1, seq_len=8)
    qlora = estimate("llama-2-7b", "qlora", batch_size=1, seq_len=8, precision="bf16-mixed")
    assert qlora["trainable_params"] == lora["trainable_params"]
    assert NF4_BYTES_PER_PARAM == pytest.approx(0.5159, abs=1e-4)  # 4 bits + 0.127 bit double-quant overhead
    assert qlora["gib"]["weights"] < lora["gib"]["weights"] / 3


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_counts_what_its_real_apply_trains_on_a_real_model(name):
    """The meta-device count is what METHODS[name].apply does to a real (allocated) model: no second recipe."""
    torch.manual_seed(0)
    real = METHODS[name].apply(LlamaForCausalLM(tiny_config()), METHOD_CONFIGS[name](), MethodContext("unused"))
    r = estimate(tiny_config(), name, batch_size=1, seq_len=8)
    assert (r["trainable_params"], r["total_params"]) == count_params(real)
    assert r["trainable_params"] > 0


BLOCK = 2 * H * H + 2 * H * KV + 3 * H * INTER + 2 * H


@pytest.mark.parametrize("tied,n,modules,expected", [(False, 1, [], BLOCK), (False, 1, ["lm_head"], BLOCK + VOCAB * H),
                                                     (True, 2, [], 2 * BLOCK)])
def test_freeze_trains_last_blocks_and_named_modules(tied, n, modules, expected):
    r = estimate(tiny_config(tied), "freeze", batch_size=1, seq_len=8, last_n_layers=n, modules=modules)
    assert r["trainable_params"] == expected


def test_adapter_is_two_bottlenecks_per_block():
    r = estimate(tiny_config(), "adapter", batch_size=1, seq_len=8, size=16)
    assert r["trainable_params"] == L * 2 * (H * 16 + 16 + 16 * H + H)
    assert r["total_params"] == r["base_params"] + r["trainable_params"]


def test_full_fp32_adamw_is_16_bytes_per_param_plus_activations():
    r = estimate("smollm2-135m", "full", batch_size=2, seq_len=64, precision="fp32")
    b, n = r["bytes"], r["total_params"]
    assert b["weights"] + b["gradients"] + b["optimizer"] + b["master_weights"] == 16 * n
    assert b["total"] == pytest.approx(16 * n + b["activations"], abs=2)
    master = estimate("smollm2-135m", "full", batch_size=2, seq_len=64, precision="bf16-master")["bytes"]
    assert master["weights"] == 2 * n and master["master_weights"] == 4 * n  # 2 + 2 + 4 + 8 = 16 again


def test_lora_states_are_fp32_adapter_plus_adamw():
    r = estimate("llama-2-7b", "lora", batch_size=1, seq_len=8, precision="bf16-master")
    b, t = r["bytes"], r["trainable_params"]
    assert (b["gradients"], b["optimizer"], b["master_weights"]) == (4 * t, 8 * t, 0)
    assert b["weights"] == 2 * r["base_params"] + 4 * t


def test_activations_scale_and_checkpointing_and_freeze_reduce_them():
    def act(method="lora", key="activations", **kw):
        return estimate("smollm2-135m", method, **{"batch_size": 4, "seq_len": 256, **kw})["bytes"][key]

    assert act(batch_size=8, chunked_loss=False) == pytest.approx(2 * act(chunked_loss=False), rel=1e-6)
    assert act(batch_size=8, key="activations_layers") == pytest.approx(2 * act(key="activations_layers"), rel=1e-6)
    assert act(gradient_checkpointing=True) < act() / 3
    # backward stops at the first trained block: 2 of 30 layers keep activations
    assert act("freeze", "activations_layers") == pytest.approx(act("full", "activations_layers") * 2 / 30)
    assert act(attention="eager") > act()


def test_fits_against_budget(capsys):
    assert estimate("smollm2-135m", "lora", batch_size=1, seq_len=64, budget_gb=64)["fits"] is True
    assert estimate("llama-2-7b", "full", batch_size=1, seq_len=64, budget_gb=64)["fits"] is False
    assert estimate("llama-2-7b", "full", batch_size=1, seq_len=64)["fits"] is None
    assert run_plan(["model=llama-2-7b", "method.name=full,qlora", "--budget-gb", "24", "training.max_length=256",
                     "training.batch_size=1", "training.precision=bf16", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["full"]["fits"] is False and rows["qlora"]["fits"] is True
    settings = rows["full"]["settings"]
    assert (settings["precision"], settings["seq_len"], settings["batch_size"]) == ("bf16-mixed", 256, 1)
    gib = {}
    for key in ("true", "false"):  # the config's training.frozen_bf16 reaches the estimate
        assert run_plan(["model=llama-2-7b", "method.name=lora", "training.precision=bf16",
                         f"training.frozen_bf16={key}", "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)
        assert row["settings"]["frozen_bf16"] is (key == "true")
        gib[key] = row["gib"]["weights"]
    assert gib["false"] - gib["true"] > 11  # 7B's Linear weights (~6.5B) at 2 B instead of 4


def test_table_lists_every_method_and_unsupported_ones_say_why(capsys):
    assert run_plan(["model=distilbert", "training.batch_size=2", "training.max_length=32", "--budget-gb", "8"]) == 0
    out = capsys.readouterr().out
    for method in METHODS:
        assert method in out
    # an encoder plans for classify: the compatibility table refuses what training would refuse
    assert "prefix: method 'prefix' does not support stage 'classify'" in out
    with pytest.raises(ConfigError, match="method 'prefix' does not support stage 'classify'"):
        run_plan(["model=distilbert", "method.name=prefix"])
    with pytest.raises(ConfigError, match="no_such_proj match no layer.*k_proj, lm_head, o_proj, q_proj"):
        run_plan(["model=smollm2-135m", "method.name=lora", "method.target_modules=[no_such_proj]"])


def _json_rows(capsys, argv: list[str]) -> dict[str, dict]:
    assert run_plan([*argv, "--json"]) == 0
    return {r["method"]: r for r in json.loads(capsys.readouterr().out)}


def test_plan_takes_the_config_file_and_its_keys(tmp_path, capsys):
    """`tuneforge plan CONFIG [key=value ...]` plans the config's own method; the same keys without a file
    give the same figures; method.name=all or a list makes a table where each method takes the options it has."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: smollm2-135m-instruct\nstage: sft\nmethod: {name: lora, r: 16, target_modules: all-linear}\n"
                   "data: {train: train.jsonl}\ntraining: {batch_size: 2, max_length: 128}\noutput_dir: runs/x\n")
    from_file = _json_rows(capsys, [str(cfg), "training.precision=fp32"])
    keys = _json_rows(capsys, ["model=smollm2-135m-instruct", "method.name=lora", "method.r=16",
                               "method.target_modules=all-linear", "training.batch_size=2",
                               "training.max_length=128", "training.precision=fp32"])
    assert list(from_file) == ["lora"] and from_file == keys
    assert from_file["lora"]["trainable_params"] == 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    table = _json_rows(capsys, [str(cfg), "method.name=lora,qlora,ia3"])
    assert table["qlora"]["trainable_params"] == table["lora"]["trainable_params"]  # r 16 all-linear carried over
    assert table["ia3"]["method_params"]["target_modules"] == ["down_proj", "k_proj", "v_proj"]  # its own defaults
    with pytest.raises(ConfigError, match="unknown key 'methd'; did you mean 'method'"):
        run_plan(["model=smollm2-135m", "methd.r=8"])
    with pytest.raises(ConfigError, match="missing key 'model'"):
        run_plan(["method.name=lora"])
    with pytest.raises(ConfigError, match="method 'lora'.*method.r"):
        run_plan(["model=smollm2-135m", "method.name=lora", "method.r=0"])


def test_cli_plan_exit_codes(capsys, monkeypatch):
    from tuneforge import cli

    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)
    assert cli.main(["plan", "model=minilm-l6", "stage=classify", "method.name=lora", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["method_params"]["target_modules"] == ["query", "value"]  # peft's BERT default, not q_proj/v_proj
    assert row["settings"]["task"] == "SEQ_CLS"
    assert cli.main(["plan", "model=minilm-l6", "method.name=lora", "method.target_modules=[q_proj]"]) == 2
    assert "match no layer" in capsys.readouterr().err


def _saved_tensor_bytes(config: LlamaConfig, method: str, precision: str, batch: int, seq: int,
                        held: bool = False, chunked: bool = False, dropout: float = 0.05, stream: bool = False) -> int:
    """Bytes autograd keeps for backward (parameters excluded), counted once per storage. held: the frozen
    linear weights in bf16, as training.frozen_bf16 holds them (tuneforge/train/frozen.py's selection); stream:
    every frozen weight, as training.bf16_stream holds them, with peft's input casts off."""
    from tuneforge.train.frozen import _no_input_casts, frozen_linear_params, frozen_stream_params

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_dropout=dropout, task_type="CAUSAL_LM"))
    elif method == "freeze":
        model.requires_grad_(False)
        model.model.layers[-1].requires_grad_(True)
    for p in frozen_linear_params(model) + frozen_stream_params(model) if stream else \
            frozen_linear_params(model) if held else []:
        p.data = p.data.to(torch.bfloat16)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _no_input_casts(model, stream), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
        if chunked:  # training.chunked_loss, as tuneforge's loss calls it (all positions supervised)
            from tuneforge.train.chunked_loss import chunked_cross_entropy, lm_head_parts

            decoder, head = lm_head_parts(model)
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
            chunked_cross_entropy(hidden.flatten(0, 1), head.weight, ids.flatten())
        else:
            logits = model(input_ids=ids, use_cache=False).logits.float()
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    return sum(n for ptr, n in seen.items() if ptr not in params)


@pytest.mark.parametrize("precision, held", [("fp32", False), ("bf16-mixed", False), ("bf16-mixed", True)])
@pytest.mark.parametrize("method, dropout", [("full", 0.0), ("lora", 0.05), ("lora", 0.0), ("freeze", 0.0)])
def test_activation_formula_matches_saved_tensors(method, dropout, precision, held):
    """Saved tensors = the per-layer terms + the fp32 log-softmax (the formula's other 4V is its gradient); with
    training.frozen_bf16 (held) the frozen linear weights' autocast copies are gone. LoRA with and without dropout
    (its masks and per-target input copies; 0 is the default)."""
    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True)
    batch, seq = 2, 64
    extra = {"last_n_layers": 1} if method == "freeze" else {"dropout": dropout} if method == "lora" else {}
    r = estimate(config, method, batch_size=batch, seq_len=seq, precision=precision, frozen_bf16=held,
                 chunked_loss=False, **extra)
    head_copy = 2 * 128 * 256 if precision != "fp32" else 0  # the tied head is not held
    predicted = r["bytes"]["activations_layers"] + batch * seq * 4 * 128 + head_copy
    measured = _saved_tensor_bytes(config, method, precision, batch, seq, held, dropout=dropout)
    assert predicted == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_chunked_loss_formula_matches_saved_tensors(method, precision):
    """training.chunked_loss: what the loss keeps for backward is the hidden states' fp32 gradient per position
    (and the head weight's fp32 gradient where it trains: full's tied head), not the [positions x vocab]
    log-probabilities; the estimate's head term is that plus one chunk's transient logits and the bf16 head copy
    (with this 128-token vocabulary no smaller than the plain loss's: the saving is the next test's)."""
    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True)
    batch, seq = 2, 64
    r = estimate(config, method, batch_size=batch, seq_len=seq, precision=precision, chunked_loss=True,
                 frozen_bf16=False)  # measured below without holding the frozen weights in bf16
    kept = batch * seq * 256 * 4 + (4 * 128 * 256 if method == "full" else 0)
    measured = _saved_tensor_bytes(config, method, precision, batch, seq, chunked=True, dropout=0.0)
    assert r["bytes"]["activations_layers"] + kept == pytest.approx(measured, rel=0.1)
    chunk = batch * seq * 128 * 12  # one chunk: logits, log-probabilities and their gradient, 12 B an entry
    copy = 2 * 128 * 256 if precision != "fp32" else 0
    assert r["bytes"]["activations_head"] == kept + chunk + copy
    plain = estimate(config, method, batch_size=batch, seq_len=seq, precision=precision, chunked_loss=False)
    assert r["settings"]["chunked_loss"] is True and plain["settings"]["chunked_loss"] is False


def test_chunked_loss_on_smollm2_saves_the_vocab_sized_tensors():
    """SmolLM2 (49,152 tokens), 8 x 512 positions, LoRA under bf16-mixed: the plain loss keeps 10 B per position
    and vocab entry; the chunked one a chunk's worth and 4 B x hidden per position."""
    on = estimate("smollm2-135m", "lora", batch_size=8, seq_len=512, precision="bf16-mixed")
    off = estimate("smollm2-135m", "lora", batch_size=8, seq_len=512, precision="bf16-mixed", chunked_loss=False)
    tokens, vocab, hidden = 8 * 512, 49152, 576
    assert off["bytes"]["activations_head"] - on["bytes"]["activations_head"] == pytest.approx(
        tokens * vocab * 10 - (tokens * hidden * 4 + (8 * 2**20 // vocab) * vocab * 12), abs=1)
    assert on["bytes"]["activations_layers"] == off["bytes"]["activations_layers"]


def test_frozen_bf16_weights_are_two_bytes_while_training():
    """bf16-mixed with training.frozen_bf16: a LoRA base's Linear weights 2 B each and no per-layer copies of
    them; freeze holds the frozen blocks' only; fp32, bf16-master, QLoRA and the key off are unchanged."""
    def b(method, precision="bf16-mixed", **kw):
        return estimate("smollm2-135m", method, batch_size=1, seq_len=64, precision=precision, **kw)

    on, off = b("lora"), b("lora", frozen_bf16=False)
    linear = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)  # q, o, k, v, gate, up, down per block
    assert off["bytes"]["weights"] - on["bytes"]["weights"] == 2 * linear
    assert on["bytes"]["activations_weight_copies"] == off["bytes"]["activations_weight_copies"] - 2 * linear
    assert on["settings"]["frozen_bf16"] is True and off["settings"]["frozen_bf16"] is False
    freeze, freeze_off = b("freeze", last_n_layers=2), b("freeze", last_n_layers=2, frozen_bf16=False)
    assert freeze_off["bytes"]["weights"] - freeze["bytes"]["weights"] == 2 * linear * 28 // 30
    assert freeze["bytes"]["activations"] == freeze_off["bytes"]["activations"]  # trained blocks keep copies
    for method, precision in (("lora", "fp32"), ("lora", "bf16-master"), ("qlora", "bf16-mixed"),
                              ("full", "bf16-mixed")):
        assert b(method, precision)["bytes"] == b(method, precision, frozen_bf16=False)["bytes"]
