"""``PackedDataset``: fixed-length, shuffled, resumable, rank-sharded windows over token shards.

Window ``k`` of a split is the ``seq_len + 1`` tokens starting at ``k * seq_len``; its first
``seq_len`` tokens are ``input_ids`` and its last ``seq_len`` the aligned targets
``shift_labels``. Consecutive windows overlap by one token, so every token of the split is a
target exactly once (as in Megatron-LM); documents are packed back to back, separated by EOS.

Per epoch the ``n = (tokens - 1) // seq_len`` windows are permuted (seeded by ``(seed, epoch)``)
and dealt round-robin to the ``world_size`` ranks. Every rank yields the same number of windows,
``n // world_size``, which DDP needs; the ``n % world_size`` windows left over at the end of the
permutation are skipped for that epoch (with shuffling, different windows each epoch). The last
``(tokens - 1) % seq_len`` tokens of the split are never used.

``state_dict()`` holds the epoch and the number of samples this rank has handed out; after
``load_state_dict()`` iteration continues with exactly the next sample. The position is counted in
the process that iterates: use a ``DataLoader`` with ``num_workers=0`` (reading a window is a
memory copy, so workers buy nothing) when you need resumption. With ``num_workers > 0`` the
windows are split between the workers (none is repeated) but the parent's ``state_dict()`` does not
advance.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UsageError
from .shards import load_split


class PackedDataset(IterableDataset):
    """Windows of ``seq_len + 1`` tokens over a folder written by ``prepare_data.py tokenize``.

    Args:
        path: the prepared token folder.
        split: ``"train"`` or ``"val"``.
        seq_len: tokens per sample (``input_ids`` and ``shift_labels`` each have this length).
        seed: shuffling seed; epoch ``e`` uses the permutation seeded by ``(seed, e)``.
        shuffle: permute windows each epoch (False: in corpus order, e.g. for evaluation).
        rank, world_size: this data-parallel rank; the dataset shards itself, do not wrap it in a
            ``DistributedSampler`` or shard it again.
        return_cu_seqlens: also yield ``cu_seqlens`` (int32 document boundaries inside the window,
            from 0 to ``seq_len``) and ``position_ids`` (restarting at 0 at each document start),
            for intra-document attention. Batch such samples with :func:`collate_packed`.

    Yields dicts ``{"input_ids": LongTensor[seq_len], "shift_labels": LongTensor[seq_len]}``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        seq_len: int = 1024,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        return_cu_seqlens: bool = False,
    ):
        super().__init__()
        if seq_len < 1:
            raise UsageError(f"seq_len must be positive, got {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not in range for world_size {world_size}")
        self.path = os.fspath(path)
        self.split = split
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.return_cu_seqlens = bool(return_cu_seqlens)
        tokens, _, manifest = load_split(self.path, split)
        self.manifest = manifest
        self.num_tokens = int(tokens.shape[0])
        self.num_windows = max(self.num_tokens - 1, 0) // self.seq_len
        if self.num_windows < 1:
            raise UsageError(
                f"split {split!r} of {self.path!r} has {self.num_tokens} tokens, fewer than one window of "
                f"seq_len + 1 = {self.seq_len + 1}; use a smaller seq_len or more data"
            )
        if self.num_windows < self.world_size:
            raise UsageError(
                f"split {split!r} of {self.path!r} has {self.num_windows} windows of {self.seq_len} tokens, "
                f"fewer than world_size {self.world_size}; use a smaller seq_len or more data"
            )
        self.samples_per_rank = self.num_windows // self.world_size
        self.epoch = 0
        self.position = 0  # samples of the current epoch this rank has handed out
        self._tokens: np.ndarray | None = None
        self._index: np.ndarray | None = None
        self._order_cache: tuple[int, np.ndarray] | None = None

    # -- data access (memory maps are opened lazily and never pickled) -------------------------
    def _open(self) -> None:
        if self._tokens is None:
            self._tokens, self._index, _ = load_split(self.path, self.split)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_tokens=None, _index=None, _order_cache=None)
        return state

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        return self.samples_per_rank

    @property
    def tokens_per_epoch(self) -> int:
        """Input tokens all ranks together see in one epoch."""
        return self.samples_per_rank * self.world_size * self.seq_len

    def rank_windows(self, epoch: int | None = None) -> np.ndarray:
        """Window numbers this rank yields in ``epoch``, in order."""
        epoch = self.epoch if epoch is None else epoch
        if self._order_cache is None or self._order_cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            else:
                order = np.arange(self.num_windows)
            used = self.samples_per_rank * self.world_size
            self._order_cache = (epoch, order[self.rank:used:self.world_size])
        return self._order_cache[1]

    def window(self, k: int) -> dict[str, torch.Tensor]:
        """Sample ``k`` of the split (no shuffling involved)."""
        self._open()
        start = k * self.seq_len
        chunk = torch.from_numpy(np.asarray(self._tokens[start:start + self.seq_len + 1], dtype=np.int64))
        sample = {"input_ids": chunk[:-1], "shift_labels": chunk[1:]}
        if self.return_cu_seqlens:
            index = self._index
            end = start + self.seq_len
            lo = int(np.searchsorted(index, start, side="right"))
            hi = int(np.searchsorted(index, end, side="left"))
            inner = np.asarray(index[lo:hi], dtype=np.int64) - start
            bounds = np.concatenate([[0], inner, [self.seq_len]]).astype(np.int32)
            lengths = np.diff(bounds)
            positions = np.arange(self.seq_len) - np.repeat(bounds[:-1], lengths)
            sample["cu_seqlens"] = torch.from_numpy(bounds)
            sample["position_ids"] = torch.from_numpy(positions.astype(np.int64))
        return sample

    # -- iteration ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (its own shuffle). Calling it with the current epoch keeps the position,
        so a resumed run may call it unconditionally."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        windows = self.rank_windows(self.epoch)
        worker = get_worker_info()
        if worker is not None:  # split between DataLoader workers; the parent's position is not tracked
            for j in range(self.position + worker.id, len(windows), worker.num_workers):
                yield self.window(int(windows[j]))
            return
        while self.position < len(windows):
            k = int(windows[self.position])
            self.position += 1  # counted before handing out: a state taken now resumes after it
            yield self.window(k)
        self.epoch += 1
        self.position = 0

    # -- resumption ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position to resume from. All ranks are at the same position, so one rank's state
        serves every rank."""
        return {
            "epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
            "seq_len": self.seq_len, "world_size": self.world_size, "num_tokens": self.num_tokens,
            "split": self.split,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next sample is the one after the last one handed out."""
        for key in ("seq_len", "world_size", "num_tokens", "seed", "shuffle", "split"):
            if key in state and state[key] != getattr(self, key):
                raise UsageError(
                    f"the data state was saved with {key}={state[key]!r} but this dataset has "
                    f"{key}={getattr(self, key)!r}; resume with the same data settings"
                )
        position = int(state["position"])
        if not 0 <= position <= self.samples_per_rank:
            raise UsageError(f"data position {position} is outside this epoch (0..{self.samples_per_rank})")
        self.epoch = int(state["epoch"])
        self.position = position


def collate_packed(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack packed samples into a batch.

    ``input_ids`` / ``shift_labels`` (and ``position_ids``) become ``[B, seq_len]``. Per-sample
    ``cu_seqlens`` are joined into one flat int32 ``cu_seqlens`` over the ``B * seq_len`` tokens (the
    layout of ``varlen_attention``) with ``max_seqlen``, the longest document piece.
    """
    out: dict[str, Any] = {
        "input_ids": torch.stack([b["input_ids"] for b in batch]),
        "shift_labels": torch.stack([b["shift_labels"] for b in batch]),
    }
    if "position_ids" in batch[0]:
        out["position_ids"] = torch.stack([b["position_ids"] for b in batch])
    if "cu_seqlens" in batch[0]:
        parts, offset = [], 0
        for b in batch:
            parts.append(b["cu_seqlens"][:-1] + offset)
            offset += int(b["cu_seqlens"][-1])
        parts.append(torch.tensor([offset], dtype=torch.int32))
        cu = torch.cat(parts).to(torch.int32)
        out["cu_seqlens"] = cu
        out["max_seqlen"] = int((cu[1:] - cu[:-1]).max())
    return out
