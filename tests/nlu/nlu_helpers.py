"""Shared helpers for the TuringNLU tests: tiny random transformers checkpoints saved to disk."""

from __future__ import annotations

import torch
import transformers

STEMS = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}
CONFIGS = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
           "xlm-roberta": transformers.XLMRobertaConfig}
SHAPES = {
    "h32": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    "h48": dict(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, intermediate_size=64,
                hidden_act="gelu_new"),
}


def pad_id(kind: str) -> int:
    return 0 if kind == "bert" else 1


def hf_config(kind: str, shape: str = "h32", **overrides):
    kwargs = dict(vocab_size=97, max_position_embeddings=24 + (0 if kind == "bert" else 2),
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=pad_id(kind))
    kwargs.update(SHAPES[shape])
    kwargs.update(overrides)
    return CONFIGS[kind](**kwargs)


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every parameter off its init (zero biases, unit norms) so that a misplaced tensor shows."""
    gen = torch.Generator().manual_seed(1234)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * scale)


def make_hf(kind: str, head: str, shape: str = "h32", **overrides):
    """A random transformers model, e.g. ``make_hf("bert", "ForMaskedLM")``."""
    model = getattr(transformers, STEMS[kind] + head)(hf_config(kind, shape, **overrides))
    perturb(model)
    model.tie_weights()
    return model.eval()


def make_batch(kind: str, batch: int = 3, seq: int = 11, padding: bool = True, vocab: int = 97, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    if padding:
        for row in range(1, batch):
            mask[row, max(1, seq - 3 * row):] = 0
    ids = ids.masked_fill(mask == 0, pad_id(kind))
    return ids, mask
