"""Masked-language-model collator for the encoder family (BERT's recipe, dynamic masking).

Each batch is masked afresh (dynamic masking, as in RoBERTa): about ``mlm_probability`` of the
tokens are chosen; of those 80 % become the mask token, 10 % a random token and 10 % stay as they
are, and ``labels`` holds the original id there (-100 elsewhere). With ``whole_word_mask`` the
choice is made per word: all pieces of a word are chosen together. Words come from the tokenizer's
own convention: WordPiece continuations start with ``##``, SentencePiece words start with ``▁``,
byte-level BPE words start with ``Ġ``. Special tokens and padding are never chosen, and random
replacements are never special tokens.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..errors import UsageError
from .tokenizer import is_continuation_table, load_tokenizer


class DataCollatorForMLM:
    """Pad a list of examples and mask them for MLM.

    Args:
        tokenizer: a fast tokenizer (or a name for :func:`load_tokenizer`) with a mask token.
        mlm_probability: fraction of (non-special) tokens chosen.
        mask_replace_prob, random_replace_prob: of the chosen tokens, the fraction replaced by the
            mask token and by a random token; the rest keep their id.
        whole_word_mask: choose whole words instead of single pieces.
        pad_to_multiple_of: pad the length up to a multiple (8 helps tensor cores).
        seed: seed of the collator's own generator (deterministic masks); None uses torch's global
            generator. The generator state is part of :meth:`state_dict`.

    Examples are mappings with ``input_ids`` (list or 1-D tensor), optionally ``attention_mask``,
    ``token_type_ids`` and ``special_tokens_mask``. Returns ``input_ids``, ``attention_mask``,
    ``labels`` (and ``token_type_ids`` when given), all ``[B, T]``.
    """

    def __init__(
        self,
        tokenizer: Any,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        whole_word_mask: bool = True,
        pad_to_multiple_of: int | None = None,
        seed: int | None = None,
    ):
        self.tokenizer = load_tokenizer(tokenizer)
        if self.tokenizer.mask_token_id is None:
            raise UsageError("the tokenizer has no mask token; MLM needs one (for example [MASK] or <mask>)")
        if not 0 < mlm_probability < 1:
            raise UsageError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise UsageError("mask_replace_prob and random_replace_prob must be >= 0 and sum to at most 1")
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word_mask = whole_word_mask
        self.pad_to_multiple_of = pad_to_multiple_of
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        vocab_size = max(len(self.tokenizer), max(self.tokenizer.get_vocab().values()) + 1)
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)] = True
        self.special = special
        self.replacement_ids = torch.nonzero(~special).flatten()
        self.continuation = (
            torch.tensor(is_continuation_table(self.tokenizer), dtype=torch.bool) if whole_word_mask else None
        )
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    # -- padding ------------------------------------------------------------------------------
    def _pad(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise UsageError("cannot collate an empty batch")
        seqs = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        length = max(int(s.numel()) for s in seqs)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(seqs)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        special = torch.ones((batch, length), dtype=torch.bool)
        types = torch.zeros((batch, length), dtype=torch.long) if "token_type_ids" in examples[0] else None
        for i, (e, s) in enumerate(zip(examples, seqs)):
            n = s.numel()
            input_ids[i, :n] = s
            attention[i, :n] = torch.as_tensor(e.get("attention_mask", [1] * n), dtype=torch.long)
            if "special_tokens_mask" in e:
                special[i, :n] = torch.as_tensor(e["special_tokens_mask"], dtype=torch.bool)
            else:
                special[i, :n] = False
            if types is not None:
                types[i, :n] = torch.as_tensor(e["token_type_ids"], dtype=torch.long)
        special |= self.special[input_ids.clamp(max=self.special.numel() - 1)] | (attention == 0)
        out = {"input_ids": input_ids, "attention_mask": attention, "_special": special}
        if types is not None:
            out["token_type_ids"] = types
        return out

    def _rand(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    # -- masking ------------------------------------------------------------------------------
    def mask(self, input_ids: torch.Tensor, special: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask ``input_ids [B, T]`` (``special`` marks tokens that may not be chosen).

        Returns ``(masked_input_ids, labels)``.
        """
        draws = self._rand(input_ids.shape)
        if self.whole_word_mask:
            # A token starts a word unless it continues the previous one; specials are their own
            # "words" and split words around them. Each word takes the draw at its word number.
            cont = self.continuation[input_ids.clamp(max=self.continuation.numel() - 1)] & ~special
            cont[:, 0] = False
            word = torch.cumsum((~cont).long(), dim=1) - 1
            draws = draws.gather(1, word)
        chosen = (draws < self.mlm_probability) & ~special
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        action = self._rand(input_ids.shape)
        to_mask = chosen & (action < self.mask_replace_prob)
        to_random = chosen & (action >= self.mask_replace_prob) & (
            action < self.mask_replace_prob + self.random_replace_prob)
        masked = input_ids.clone()
        masked[to_mask] = self.tokenizer.mask_token_id
        picks = torch.randint(len(self.replacement_ids), (int(to_random.sum()),), generator=self.generator)
        masked[to_random] = self.replacement_ids[picks]
        return masked, labels

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._pad(examples)
        special = batch.pop("_special")
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], special)
        return batch

    # -- resumption ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state() if self.generator is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None and self.generator is not None:
            self.generator.set_state(state["generator"])


class PackedMLMCollator:
    """Masks windows of a :class:`~turing_models.data.PackedDataset` with a
    :class:`DataCollatorForMLM` (the packed windows carry no padding). Its ``state_dict`` is the
    masking RNG, which the trainer checkpoints with the data position so that a resumed run masks
    exactly as an uninterrupted one."""

    def __init__(self, mlm: DataCollatorForMLM):
        self.mlm = mlm

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self.mlm([{"input_ids": e["input_ids"]} for e in examples])

    def state_dict(self) -> dict[str, Any]:
        return self.mlm.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mlm.load_state_dict(state)
