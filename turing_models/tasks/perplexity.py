"""Perplexity of a decoder (TuringNLG, GPT-2) with a sliding window.

The data is a text file (or a folder / comma-separated list of them) or a token-shard folder
written by ``prepare_data.py tokenize``. Windows of ``max_length`` tokens start every ``stride``
tokens, and each window scores only the tokens the previous one did not, so with
``stride < max_length`` every token but the first is predicted once, with at least
``max_length - stride`` tokens of context. Reports the token-weighted mean NLL, the perplexity,
and bits per byte (comparable across tokenizers) for text input.

:class:`PerplexityTask` is the ``perplexity`` task of ``recipes/evaluate.py`` (it evaluates saved
models only; nothing is fine-tuned for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from turing_models.errors import UsageError
from turing_models.tasks.base import Task
from turing_models.tasks.common import evaluating, resolve_data_path


@dataclass
class PerplexityResult:
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    windows: int
    nll_sum: float

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nll, 700.0))


@torch.no_grad()
def sliding_window_perplexity(
    model, tokens: np.ndarray | torch.Tensor | list[int], *, max_length: int, stride: int, batch_size: int = 8
) -> PerplexityResult:
    """Perplexity of ``tokens`` (one flat sequence) with a sliding window.

    Window ``k`` covers ``tokens[k*stride : k*stride + max_length]`` and scores its tokens past the
    end of window ``k-1``; a window never scores its own first token (it has no context there).
    With ``stride == max_length`` the windows do not overlap (the fastest, and the highest
    perplexity; each window's first token goes unscored); smaller strides give each token more
    context and score every token but the very first.
    """
    if not 0 < stride <= max_length:
        raise UsageError(f"stride must be in [1, max_length={max_length}], got {stride}")
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n = int(ids.numel())
    if n < 2:
        raise UsageError(f"need at least 2 tokens to measure perplexity, got {n}")
    device = next(model.parameters()).device
    # (begin, end, first scored position) of every window
    windows, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + max_length, n)
        windows.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
        begin += stride
    with evaluating(model):
        nll_sum, scored = 0.0, 0
        for i in range(0, len(windows), batch_size):
            group = windows[i : i + batch_size]
            length = max(e - b for b, e, _ in group)
            input_ids = torch.zeros(len(group), length, dtype=torch.long)
            targets = torch.full((len(group), length), -100, dtype=torch.long)
            attention = torch.zeros(len(group), length, dtype=torch.long)
            for row, (b, e, first) in enumerate(group):
                input_ids[row, : e - b] = ids[b:e]
                attention[row, : e - b] = 1
                # target at position t is token t+1: score tokens first..e-1
                targets[row, first - b - 1 : e - b - 1] = ids[first:e]
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1), ignore_index=-100, reduction="sum"
            )
            nll_sum += float(nll)
            scored += int((targets != -100).sum())
    return PerplexityResult(nll=nll_sum / scored, tokens=scored, windows=len(windows), nll_sum=nll_sum)


def _read_texts(data: str) -> tuple[str, list[Path]]:
    paths = []
    for part in data.split(","):
        path = Path(resolve_data_path(part.strip()))
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".md", ".text") and p.is_file())
            if not files:
                raise UsageError(f"{path} holds no .txt files and no token shards (manifest.json)")
            paths += files
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"perplexity data not found: {part} (give a text file, a folder of them, or a token-shard folder)")
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in paths)
    if not text.strip():
        raise UsageError(f"{data} holds no text")
    return text, paths


def perplexity_tokens(data: str, tokenizer, split: Optional[str] = None) -> tuple[np.ndarray, Optional[int], str]:
    """The token ids to score, the number of UTF-8 bytes they came from (text only), and a description."""
    path = Path(resolve_data_path(data))
    if path.is_dir() and (path / "manifest.json").is_file():
        from turing_models.data import load_split, load_tokenizer

        split = split or "val"
        tokens, _, _ = load_split(path, split)
        if (path / "tokenizer").is_dir() and load_tokenizer(path / "tokenizer").get_vocab() != tokenizer.get_vocab():
            raise UsageError(
                f"{path} was tokenized with another vocabulary than the model's; re-tokenize it with the model's "
                "tokenizer (prepare_data.py tokenize --tokenizer <model folder>) or pass the matching --tokenizer"
            )
        return np.asarray(tokens, dtype=np.int64), None, f"{path} [{split}]"
    text, paths = _read_texts(data)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64), len(text.encode("utf-8")), ", ".join(map(str, paths))


@dataclass
class PerplexityOptions:
    """Sliding-window settings (``recipes/evaluate.py`` takes them as top-level options)."""

    max_length: Optional[int] = None
    """Window length in tokens; default: the model's context."""
    stride: Optional[int] = None
    """Tokens between window starts; default: max_length // 2."""
    max_tokens: Optional[int] = None
    """Score at most this many tokens."""


@dataclass
class TokenStream:
    """The tokens to score, the UTF-8 bytes they came from (text input only) and where from."""

    tokens: np.ndarray
    n_bytes: Optional[int]
    source: str


class PerplexityTask(Task):
    """Perplexity of a saved decoder on text or token shards."""

    name = "perplexity"
    family = "decoder"
    head = "TuringNLGForCausalLM"
    finetunable = False
    default_split = "val"

    @classmethod
    def options_from(cls, cfg: Any) -> PerplexityOptions:
        return PerplexityOptions(max_length=cfg.max_length, stride=cfg.stride, max_tokens=cfg.max_tokens)

    def load_eval(self, source: str, *, split: Optional[str] = None, max_examples: Optional[int] = None) -> TokenStream:
        tokens, n_bytes, what = perplexity_tokens(source, self.tokenizer, split)
        if self.o.max_tokens is not None:
            if n_bytes is not None and self.o.max_tokens < len(tokens):
                n_bytes = None  # the byte count no longer matches the scored tokens
            tokens = tokens[: self.o.max_tokens]
        return TokenStream(tokens, n_bytes, what)

    def predict(self, model, examples: TokenStream, batch_size: int) -> PerplexityResult:
        max_length, stride = self._window(model)
        return sliding_window_perplexity(model, examples.tokens, max_length=max_length, stride=stride, batch_size=batch_size)

    def _window(self, model) -> tuple[int, int]:
        context = int(model.config.max_position_embeddings)
        max_length = self.o.max_length or context
        if max_length > context:
            raise UsageError(f"max_length {max_length} exceeds the model's context of {context} tokens")
        return max_length, self.o.stride or max(1, max_length // 2)

    def evaluate(self, model, examples: TokenStream, batch_size: int):
        self.window = self._window(model)
        return super().evaluate(model, examples, batch_size)

    def metrics(self, examples: TokenStream, predictions: PerplexityResult):
        r = predictions
        max_length, stride = self.window
        metrics: dict[str, Any] = {
            "perplexity": r.perplexity, "nll": r.nll, "tokens": r.tokens, "windows": r.windows,
            "max_length": max_length, "stride": stride, "data": examples.source,
        }
        if examples.n_bytes:
            # every token but the first is scored: count the bytes of the whole text (standard practice)
            metrics["bits_per_byte"] = r.nll_sum / math.log(2) / examples.n_bytes
        return metrics, {}


TASK = PerplexityTask
