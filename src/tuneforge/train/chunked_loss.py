"""training.chunked_loss: the LM head and cross-entropy over the supervised positions, a chunk of rows at a time,
so the [positions x vocabulary] logits never exist whole.

The plain loss keeps, per supervised token, the head's logits (2 B x vocab under bf16 autocast), their fp32 copy and
fp32 log-probabilities (4 B + 4 B x vocab) until the backward pass: ~0.5 MB a token on SmolLM2's 49k vocabulary,
~1.3 MB on Llama 3's 128k, the largest single block of a LoRA step's memory. Here each chunk's logits are made,
turned into the loss and into the gradient of the loss (softmax - one-hot) at once, and multiplied back through the
head; what is kept for the backward pass is the gradient for the hidden states ([positions x hidden]) and, where the
head trains, for its weight. The arithmetic is the head's own (the same dtype as autocast gives the matmul, fp32
log-softmax, the gradient cast to the matmul's dtype before it goes back through the head), so losses and
gradients equal the plain loss's within float rounding (tests/unit/test_chunked_loss.py).

Used where the causal LM's head is a plain bias-free Linear over the decoder's last hidden state (the model types in
PLAIN_HEAD) and nothing wraps the model's own forward (no torch.compile, FSDP or DeepSpeed); elsewhere the plain
loss runs.

    head = lm_head_parts(model)            # (decoder, head Linear) or None
    loss = chunked_cross_entropy(hidden, head.weight, targets)    # summed over rows
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.config.schema import TrainingConfig

# architectures whose causal-LM forward is `lm_head(hidden)` with nothing after it (no logit soft-capping or scale)
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3"})
CHUNK_ELEMENTS = 8 * 2**20  # logits per chunk (rows x vocab): 32 MB in fp32


def chunked_loss_applies(t: TrainingConfig) -> bool:
    """training.chunked_loss (`t`: the training block), except where something wraps the model's forward: the loss
    then calls the decoder and the head itself, which a compiled forward, FSDP's root hooks or DeepSpeed's engine
    would not see."""
    return t.chunked_loss and not t.compile and t.distributed not in ("fsdp", "deepspeed")


def decoder_of(model: nn.Module) -> nn.Module | None:
    """The decoder under a causal LM (LlamaModel under LlamaForCausalLM), also inside a PEFT wrapper; None where the
    model has no such attribute."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(causal, getattr(causal, "base_model_prefix", "model"), None)
    return decoder if isinstance(decoder, nn.Module) and decoder is not causal else None


def lm_head_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder, head) of a plain causal LM (also inside a PEFT wrapper), or None where the plain loss must run."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD or not hasattr(causal, "get_output_embeddings"):
        return None
    head = causal.get_output_embeddings()
    decoder = decoder_of(causal)
    if type(head) is not nn.Linear or head.bias is not None or decoder is None:
        return None  # a LoRA-wrapped or biased head, or no separate decoder: the plain loss
    return decoder, head


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype if hidden.dtype == weight.dtype else None


def _chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype, rows: int,
            need_h: bool, need_w: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(summed loss, gradient for hidden, fp32 gradient for weight), the gradients only where asked for."""
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    for start in range(0, hidden.shape[0], rows):
        h = hidden[start : start + rows].to(dtype)
        t = targets[start : start + rows]
        logp = torch.log_softmax((h @ w.T).float(), dim=-1)
        total += -logp.gather(1, t[:, None]).sum()
        if need_h or need_w:
            g = logp.exp_()  # d(sum of -log p[target]) / d logits = softmax - one-hot
            g[torch.arange(len(t), device=g.device), t] -= 1.0
            g = g.to(dtype)
            if need_h:
                grad_h[start : start + rows] = g @ w
            if need_w:
                grad_w += (g.T @ h).float()
    return total, grad_h, grad_w


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                rows: int) -> torch.Tensor:
        total, grad_h, grad_w = _chunks(hidden, weight, targets, dtype, rows, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(grad_h, grad_w)  # None where that input needs no gradient
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None, None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          rows: int | None = None) -> torch.Tensor | None:
    """Sum over rows of -log softmax(hidden @ weight.T)[target] (fp32), or None where the dtypes leave the head's
    matmul undefined without autocast (the caller runs the plain loss)."""
    dtype = _matmul_dtype(hidden, weight)
    if dtype is None:
        return None
    rows = rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are set by hand, as autocast set them
        if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
            with torch.no_grad():  # evaluation: the loss alone
                return _chunks(hidden, weight, targets, dtype, rows, False, False)[0]
        return _ChunkedCE.apply(hidden, weight, targets, dtype, rows)
