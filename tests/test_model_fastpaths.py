"""The fused output head + cross-entropy of the model (fp32 CPU training) against the plain ops."""

import pytest
import torch
import torch.nn.functional as F

import transformer_grow.model.gpt as gpt_module
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.layers import LinearCrossEntropy

GPT2_STYLE = {"norm": "layernorm", "pos": "learned", "mlp": "gelu", "bias": True}


def _run(cfg: ModelConfig, fast: bool, monkeypatch, targets_fn=lambda y: y, logits_loss: bool = False):
    if not fast:
        monkeypatch.setattr(gpt_module, "fused_head_loss_applies", lambda h, w: False)
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    out = model(x, targets_fn(torch.roll(x, -1, 1)))
    (out.loss + (out.logits.square().mean() if logits_loss else 0)).backward()
    monkeypatch.undo()
    return out, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", [{}, GPT2_STYLE, {"tie_embeddings": False, "n_kv_head": 2}])
@pytest.mark.parametrize("case", ["plain", "ignored", "logits_loss"])
def test_fast_paths_match_plain_ops(monkeypatch, arch, case):
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=97, seq_len=12, **arch)
    kw = ({"targets_fn": lambda y: y.masked_fill(torch.arange(y.numel()).view_as(y) % 3 == 0, -1)}
          if case == "ignored" else {})
    kw["logits_loss"] = case == "logits_loss"
    fast, fast_grads = _run(cfg, True, monkeypatch, **kw)
    plain, plain_grads = _run(cfg, False, monkeypatch, **kw)
    assert type(fast.loss.grad_fn).__name__ == "LinearCrossEntropyBackward"  # the fused path ran
    assert type(plain.loss.grad_fn).__name__ != "LinearCrossEntropyBackward"
    torch.testing.assert_close(fast.logits, plain.logits)
    torch.testing.assert_close(fast.loss, plain.loss)
    assert fast_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_fused_loss_all_ignored_is_nan_with_zero_gradient():
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    logits, loss = LinearCrossEntropy.apply(hidden, weight, torch.full((4,), -1), -1)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(logits.detach(), torch.full((4,), -1), ignore_index=-1))
    assert torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0


def test_fused_loss_many_row_blocks(monkeypatch):
    monkeypatch.setattr(LinearCrossEntropy, "BLOCK_ELEMENTS", 3 * 50)  # 3 rows per block, 7 blocks
    hidden = torch.randn(20, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(0, 50, (20,))
    _, loss = LinearCrossEntropy.apply(hidden, weight, targets, -1)
    grads = torch.autograd.grad(loss * 0.3, (hidden, weight))
    ref = torch.autograd.grad(F.cross_entropy(hidden @ weight.t(), targets) * 0.3, (hidden, weight))
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want)


def test_no_gradient_work_without_grad():
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=4, vocab_size=50, seq_len=8))
    x = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        out = model(x, x)
    assert out.loss.grad_fn is None and out.logits.grad_fn is None  # the plain path: nothing formed for backward
