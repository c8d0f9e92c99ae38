"""Memory formulas for `tuneforge plan`: bytes of weights, gradients, AdamW state and activations.

Activations count what autograd keeps for backward per transformer layer and token, term by term
(docs/plan.md). The terms were checked against torch.autograd.graph.saved_tensors_hooks on a
SmolLM2-shaped Llama with torch 2.13 / transformers 5.23 / peft 0.21 (SDPA attention).

    python -c "from tuneforge.plan.memory import PRECISIONS; print(PRECISIONS)"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from tuneforge.plan.archs import MetaModel

# bitsandbytes NF4: 4 bits per weight + one absmax per 64-weight block; double quantization stores
# that absmax in 8 bits plus one fp32 scale per 256 absmax: 8/64 + 32/(64*256) = 0.127 bit/param.
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
ADAMW_BYTES = 8  # exp_avg + exp_avg_sq, fp32 each
ADAPTER_BYTES = 4  # peft keeps adapter weights (and so their grads) in fp32 even on a bf16 base
ATTN_IN = {"q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin", "query", "key", "value"}
ATTN_OUT = {"o_proj", "out_lin"}  # their input is the attention output, which SDPA already keeps


@dataclass(frozen=True)
class Precision:
    name: str
    weight: int  # bytes per stored base weight (and per gradient of one)
    residual: int  # bytes per element of the residual stream and norm tensors ("f" in the docs)
    compute: int  # bytes per element of matmul inputs/outputs ("c" in the docs)
    autocast: bool  # bf16 autocast over fp32 weights: each matmul keeps a bf16 copy of its weight


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", 4, 4, 4, False),
    "bf16-mixed": Precision("bf16-mixed", 4, 4, 2, True),  # tuneforge's `precision: bf16`
    "bf16-master": Precision("bf16-master", 2, 2, 2, False),  # bf16 weights/grads + fp32 master copy
}
PRECISION_ALIASES = {"bf16": "bf16-mixed"}


@dataclass(frozen=True)
class Layout:
    """Shapes the activation formula needs, read from the config and the meta model."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int  # num_key_value_heads * head_dim (GQA)
    vocab: int  # 0 for a classification head: its logits are negligible
    gated: bool  # SwiGLU MLP (gate, up, down) rather than fc -> act -> fc
    linears: dict[str, tuple[int, int]]  # one block's Linear: leaf name -> (in, out)
    block_linear_params: int
    backbone_linear_params: int  # what bitsandbytes quantizes: Linear layers of model.base_model
    head_weight: int  # the LM head matmul weight (tied or not), cast to bf16 under autocast


def _linear_params(module: nn.Module) -> int:
    return sum(p.numel() for m in module.modules() if isinstance(m, nn.Linear) for p in m.parameters())


def layout(meta: MetaModel) -> Layout:
    config, block = meta.model.config, meta.blocks[0]
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * hidden
    linears = {n.rsplit(".", 1)[-1]: (m.in_features, m.out_features)
               for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    kv_heads = getattr(config, "num_key_value_heads", None) or heads  # encoders: plain multi-head attention
    causal = meta.task == "CAUSAL_LM"
    head = meta.model.get_output_embeddings() if causal else None
    return Layout(
        layers=len(meta.blocks), hidden=hidden, intermediate=inter, heads=heads, kv_dim=kv_heads * head_dim,
        vocab=config.vocab_size if causal else 0,
        gated=sum(out == inter for _, out in linears.values()) >= 2,
        linears=linears, block_linear_params=_linear_params(block),
        backbone_linear_params=_linear_params(meta.model.base_model),
        head_weight=head.weight.numel() if head is not None else 0,
    )


def frozen_layer(lay: Layout, p: Precision, seq: int, attention: str) -> float:
    """Bytes per token a layer keeps when gradients pass through it but none of its weights train."""
    h, i, a = lay.hidden, lay.intermediate, lay.heads
    total = 2 * h * p.residual  # the two norm inputs
    total += (h + 2 * lay.kv_dim) * p.compute + h * p.compute  # q, k, v and the attention output
    total += (3 * i if lay.gated else i) * p.compute  # gate, up, act(gate) | act input
    total += 4 * a  # SDPA's fp32 logsumexp per head
    if attention == "eager":  # the softmax probabilities (fp32 under autocast, plus their bf16 cast)
        total += a * seq * (4 + (p.compute if p.autocast else 0)) + 2 * (h - lay.kv_dim) * p.compute
    return total


def trained_layer(lay: Layout, p: Precision, seq: int, attention: str) -> float:
    """A layer whose weights train (full, freeze) also keeps every Linear's input and the norms' inputs."""
    h = lay.hidden
    # Without autocast q/k/v (and gate/up) share one normed tensor per norm; autocast makes one bf16 copy
    # per Linear. o_proj reads the kept attention output; down_proj adds its own input (i).
    copies = len(lay.linears) - 2 if p.autocast else 2
    return frozen_layer(lay, p, seq, attention) + 2 * h * p.residual + copies * h * p.compute \
        + lay.intermediate * p.compute


def lora_extra(lay: Layout, p: Precision, targets: list[str], r: int, dropout: float) -> float:
    """Per token: the inputs lora_A needs, its r outputs, and the dropout masks."""
    own_copy = p.autocast or dropout > 0  # else modules that read the same normed tensor share it
    hit = [t for t in targets if t in lay.linears]
    total, shared = 0.0, set()
    for name in hit:
        d_in = lay.linears[name][0]
        if name in ATTN_OUT:  # SDPA keeps this tensor already (under autocast a reshape copy: measured)
            total += d_in * p.compute if p.autocast else 0
        elif d_in == lay.intermediate or own_copy:  # down_proj's input is not kept in a frozen layer
            total += d_in * p.compute
        else:
            shared.add("attn" if name in ATTN_IN else "mlp")
        # The dropout mask has the input's dtype: fp32 for normed inputs, bf16 for o/down under autocast.
        mask = p.compute if name in ATTN_OUT or d_in == lay.intermediate else p.residual
        total += r * p.compute + (d_in * mask if dropout > 0 else 0)
    return total + len(shared) * lay.hidden * p.compute


def ia3_extra(lay: Layout, p: Precision, targets: list[str], feedforward: list[str]) -> float:
    """IA3 scales k/v outputs (keeps them unscaled) and the down_proj input (kept in fp32 by the vector)."""
    total = 0.0
    for name in (t for t in targets if t in lay.linears):
        d_in, d_out = lay.linears[name]
        total += d_in * p.residual if name in feedforward else d_out * p.compute
    return total


def head_per_token(lay: Layout, p: Precision) -> float:
    """fp32 log-softmax kept for backward + its gradient (or the fp32 logits) + bf16 logits under autocast."""
    return lay.vocab * (8 + (p.compute if p.autocast else 0))


def chunked_head(lay: Layout, p: Precision, logits_tokens: float, head_trains: bool) -> float:
    """training.chunked_loss (tuneforge/train/chunked_loss.py): the hidden states' gradient kept per supervised
    token, one chunk's logits at a time (matmul-dtype logits, fp32 log-probabilities, their gradient in both
    dtypes), and the head weight's fp32 gradient where the head trains."""
    from tuneforge.train.chunked_loss import CHUNK_ELEMENTS

    rows = min(logits_tokens, max(1, CHUNK_ELEMENTS // lay.vocab))
    chunk = rows * lay.vocab * (8 + (2 * p.compute if p.autocast else 4))
    return logits_tokens * lay.hidden * p.residual + chunk + (4 * lay.head_weight if head_trains else 0)


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30
