"""turing_models.layers.loss.cross_entropy: the lean fp32 path equals F.cross_entropy (value and
gradient), with ignored labels, both reductions and padded vocabulary columns; and the causal LM
loss that uses it equals the textbook computation."""

import pytest
import torch
import torch.nn.functional as F

from turing_models.layers.loss import cross_entropy


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("num_valid", [None, 37])
def test_matches_torch_cross_entropy(reduction, num_valid):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(203, 40, generator=g)).requires_grad_()  # 203: a ragged last chunk
    labels = torch.randint(0, num_valid or 40, (203,), generator=g)
    labels[::7] = -100
    upstream = torch.tensor(1.7)
    ours = cross_entropy(logits, labels, reduction=reduction, num_valid_classes=num_valid)
    assert ours.grad_fn is not None and "LogitsCrossEntropy" in type(ours.grad_fn).__name__
    ours.backward(upstream)
    got = logits.grad.clone()
    logits.grad = None
    ref = F.cross_entropy(logits[:, :num_valid], labels, reduction=reduction)
    ref.backward(upstream)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, logits.grad, rtol=1e-5, atol=1e-6)  # fp32 rounding of exp(x - lse)
    if num_valid is not None:
        assert got[:, num_valid:].abs().max() == 0  # padding columns: no gradient


def test_other_inputs_go_to_torch():
    """No gradient needed, fp64, or a 3-D input: F.cross_entropy, same values."""
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(10, 6, generator=g), torch.randint(0, 6, (10,), generator=g)
    for x in (logits, logits.double().requires_grad_(), logits[None].transpose(1, 2).requires_grad_()):
        y = labels if x.dim() == 2 else labels[None]
        loss = cross_entropy(x, y)
        assert torch.allclose(loss.double(), F.cross_entropy(x, y).double())
        assert loss.grad_fn is None or "LogitsCrossEntropy" not in type(loss.grad_fn).__name__


def test_all_labels_ignored_gives_nan_like_torch():
    logits = torch.randn(4, 5, requires_grad=True)
    labels = torch.full((4,), -100)
    assert torch.isnan(cross_entropy(logits, labels)) and torch.isnan(F.cross_entropy(logits, labels))


def test_causal_lm_loss_with_padded_vocabulary():
    """TuringNLG with 136 embedding rows of which 130 are real: the loss reads all 136 logits but
    its softmax stops at 130; loss and the tied weight's gradient equal F.cross_entropy over the
    real columns, and the returned logits are the 130 real ones."""
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    torch.manual_seed(0)
    model = TuringNLGForCausalLM(TuringNLGConfig(
        vocab_size=136, real_vocab_size=130, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0))
    ids = torch.randint(0, 130, (2, 12))
    out = model(ids, labels=ids)
    out.loss.backward()
    got = model.lm_head.weight.grad.clone()
    model.zero_grad()
    logits = model._logits(model.model(ids).last_hidden_state)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 130), ids[:, 1:].reshape(-1))
    ref.backward()
    assert out.logits.shape == (2, 12, 130)
    torch.testing.assert_close(out.logits, logits.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, model.lm_head.weight.grad, rtol=1e-5, atol=1e-7)
