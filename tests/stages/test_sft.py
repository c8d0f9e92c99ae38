"""A LoRA SFT run on the tiny model, through the real stage: loss falls, only LoRA weights change, the run
directory follows the contract, the report's generations show the user's question (not the template's
system prompt), and the saved adapter reloads in plain peft with the trained model's logits."""

import json

import pytest
import stage_kit as kit
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tuneforge.report.write import render_report

SYSTEM = "you are a helpful assistant . answer the question in one short sentence ."


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    import tiny
    from tuneforge.config.schema import Config

    d = tmp_path_factory.mktemp("sft")
    cfg = Config.model_validate({
        "model": str(tiny_model_dir), "stage": "sft",
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(tiny.write_jsonl(d / "train.jsonl", tiny.toy_sft_rows(42))),
                 "eval": str(tiny.write_jsonl(d / "eval.jsonl", tiny.toy_sft_rows(7, seed=1))),
                 "system_prompt": SYSTEM},
        "training": {"max_steps": 30, "learning_rate": 3e-2, "batch_size": 4, "lr_scheduler": "constant",
                     "warmup_ratio": 0.0, "max_length": 128, "progress": False, "precision": "fp32",
                     "eval_steps": 15, "save_steps": 15},
        "eval": {"generate_samples": 7, "max_new_tokens": 16},
        "output_dir": str(d / "run"), "seed": 0,
    })
    run = kit.run_captured(cfg)
    return cfg, run.out, run.model


def test_loss_falls_and_task_is_learned(sft_run):
    _, out, _ = sft_run
    m = json.loads((out / "metrics.json").read_text())
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert m["eval_after"]["loss"] < 0.5 * m["eval_before"]["loss"]
    assert m["eval_after"]["token_f1"] > m["eval_before"]["token_f1"]


def test_run_directory_contract(sft_run):
    _, out, _ = sft_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "config.yaml", "metrics.json", "report.md",
                 "loss.png", "template.json", "chat_template.jinja", "tokenizer.json", "generations.jsonl"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    m = json.loads((out / "metrics.json").read_text())
    for section in ("eval_before", "eval_after"):
        assert {"loss", "exact_match", "token_f1"} <= set(m[section])
    train = m["train"]
    for key in ("tokens_per_second", "peak_rss_mb", "wall_seconds", "trainable_params", "total_params"):
        assert train[key] > 0, key
    # real tokens only: exactly the tokens of the samples seen (30 steps x 4 samples over 42 samples)
    assert train["tokens"] == sum(json.loads(x)["tokens"] for x in (out / "train_log.jsonl").read_text().splitlines())
    assert [e["step"] for e in m["evals"]] == [15, 30]
    report = (out / "report.md").read_text()
    assert "![loss curve](loss.png)" in report and "| base | tuned |" in report
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000015", "step-0000030"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left behind


def test_only_lora_weights_changed(sft_run, tiny_model_dir):
    _, out, _ = sft_run
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(model, str(out))
    for name, param in peft_model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, base[key]), name


def test_report_shows_the_question_not_the_system_prompt(sft_run):
    cfg, out, _ = sft_run
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in open(cfg.data.eval)]
    questions = [r.get("instruction") or r.get("prompt") or r["messages"][0]["content"] for r in rows]
    assert [g["question"] for g in gens] == questions
    assert all(g["prompt"].startswith("<|im_start|>system\n" + SYSTEM) for g in gens)  # what the model saw
    table = (out / "report.md").read_text().split("## Generations")[1].split("\n## ")[0]
    assert "| # | question |" in table and SYSTEM not in table
    assert all(f"| {i} | {q} |" in table for i, q in enumerate(questions, 1))


def test_report_falls_back_to_the_end_of_the_prompt():
    """generations without a "question" (written before it existed) show the prompt's end, not its start."""
    prompt = "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\nwhat color is the sky ?<|im_end|>\n"
    metrics = {"stage": "sft", "method": "lora", "model": "m", "train": {}, "eval_after": {}}
    text = render_report(metrics, [{"prompt": prompt * 3, "reference": "blue", "base": "x", "tuned": "blue"}], "")
    row = [line for line in text.splitlines() if line.startswith("| 1 |")][0]
    assert "what color is the sky ?" in row and row.split(" | ")[1].startswith("…")


def test_long_questions_keep_the_end_that_tells_rows_apart():
    """Alpaca rows share a long instruction and differ in their input, at the end of the question: a cut cell
    keeps the start and the end, so every row reads differently."""
    instruction = "Extract the order from the sentence as JSON with the keys name, item, quantity and city. "
    gens = [{"question": instruction + f"{who} from {city} wants ten screws.", "reference": "", "base": "", "tuned": ""}
            for who, city in (("Noah", "Krakow"), ("Ximena", "Amsterdam"))]
    metrics = {"stage": "sft", "method": "lora", "model": "m", "train": {}, "eval_after": {}}
    rows = [line for line in render_report(metrics, gens, "").splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    cells = [row.split(" | ")[1] for row in rows]
    assert all(c.startswith("Extract the order") and "…" in c and len(c) <= 120 for c in cells)
    assert cells[0].endswith("Noah from Krakow wants ten screws.")
    assert cells[1].endswith("Ximena from Amsterdam wants ten screws.")


def test_adapter_reloads_in_plain_peft_with_identical_logits(sft_run, tiny_model_dir):
    """The adapter the stage saved, loaded by plain peft on the base, gives the trained model's logits."""
    from transformers import AutoTokenizer

    from tuneforge.data.batching import collate_packed
    from tuneforge.data.dataset import load_examples

    cfg, out, model = sft_run
    tok = AutoTokenizer.from_pretrained(out)
    examples, _ = load_examples(cfg, tok, cfg.data.train)
    batch = collate_packed(examples[:3])
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    with torch.no_grad():
        want = model.eval()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        got = reloaded.eval()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    assert not torch.equal(want, base)  # training changed it
    assert torch.equal(want, got)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
