"""PackedDataset: coverage across ranks, contiguous windows, exact resumption, document boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from turing_models.data import PackedDataset, collate_packed, write_token_folder
from turing_models.errors import UsageError

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_folder(root, doc_lengths, name="shards"):
    """Token i of the split has value i (mod 60000), so every token is identifiable."""
    total = int(sum(doc_lengths))
    values = np.arange(total) % 60000
    bounds = np.concatenate([[0], np.cumsum(doc_lengths)])
    docs = [values[bounds[i]:bounds[i + 1]] for i in range(len(doc_lengths))]
    return write_token_folder(root / name, {"train": docs, "val": docs[:1]}, vocab_size=60000, overwrite=True)


doc_lengths = st.lists(st.integers(1, 40), min_size=1, max_size=30).filter(lambda d: sum(d) >= 12)


@HYP
@given(lengths=doc_lengths, seq_len=st.integers(1, 11), world_size=st.integers(1, 4),
       seed=st.integers(0, 3), epoch=st.integers(0, 2))
def test_each_window_once_across_ranks_and_contiguous(tmp_path, lengths, seq_len, world_size, seed, epoch):
    folder = make_folder(tmp_path, lengths)
    total = sum(lengths)
    n = (total - 1) // seq_len
    if n < world_size:
        with pytest.raises(UsageError, match="fewer than world_size"):
            PackedDataset(folder, seq_len=seq_len, world_size=world_size)
        return
    starts = []
    for rank in range(world_size):
        ds = PackedDataset(folder, seq_len=seq_len, seed=seed, rank=rank, world_size=world_size)
        ds.set_epoch(epoch)
        samples = list(ds)
        assert len(samples) == len(ds) == n // world_size
        for s in samples:
            x, y = s["input_ids"], s["shift_labels"]
            assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (seq_len,)
            # Contiguous: consecutive token values, targets shifted by one.
            assert torch.equal(x[1:] - x[:-1], torch.ones(seq_len - 1, dtype=torch.long))
            assert torch.equal(y, x + 1)
            assert int(x[0]) % seq_len == 0
            starts.append(int(x[0]))
    # Every window at most once across ranks; exactly n - n % world_size windows in the epoch.
    assert len(starts) == len(set(starts)) == n - n % world_size
    assert set(starts) <= set(range(0, n * seq_len, seq_len))
    if world_size == 1:  # every token of the epoch is an input exactly once
        tokens = sorted(int(v) for s in starts for v in range(s, s + seq_len))
        assert tokens == list(range(n * seq_len))


@HYP
@given(lengths=doc_lengths, seq_len=st.integers(1, 6), stop=st.integers(0, 40), seed=st.integers(0, 3))
def test_resume_continues_with_exactly_the_next_sample(tmp_path, lengths, seq_len, stop, seed):
    folder = make_folder(tmp_path, lengths)
    straight = PackedDataset(folder, seq_len=seq_len, seed=seed)
    expected = [s["input_ids"] for _ in range(3) for s in straight]  # three epochs
    stop = min(stop, len(expected))

    first = PackedDataset(folder, seq_len=seq_len, seed=seed)
    got, it = [], iter(first)
    while len(got) < stop:
        try:
            got.append(next(it)["input_ids"])
        except StopIteration:
            it = iter(first)
    state = first.state_dict()

    resumed = PackedDataset(folder, seq_len=seq_len, seed=seed)
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])  # a trainer may call this on resume: must not reset
    while len(got) < len(expected):
        got.extend(s["input_ids"] for s in resumed)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_shuffle_is_seeded_and_changes_by_epoch(tmp_path):
    folder = make_folder(tmp_path, [50] * 10)
    order = lambda ds: [int(s["input_ids"][0]) for s in ds]  # noqa: E731
    a, b = PackedDataset(folder, seq_len=4, seed=1), PackedDataset(folder, seq_len=4, seed=1)
    assert order(a) == order(b)  # same seed, same order
    assert order(a) != order(PackedDataset(folder, seq_len=4, seed=1))  # a's epoch 1 differs
    assert order(PackedDataset(folder, seq_len=4, seed=2)) != order(PackedDataset(folder, seq_len=4, seed=1))
    plain = order(PackedDataset(folder, seq_len=4, shuffle=False))
    assert plain == list(range(0, 124 * 4, 4))


def test_cu_seqlens_and_position_ids_follow_documents(tmp_path):
    lengths = [3, 7, 1, 12, 5, 9]
    folder = make_folder(tmp_path, lengths)
    doc_starts = set(np.cumsum([0] + lengths).tolist())
    ds = PackedDataset(folder, seq_len=8, shuffle=False, return_cu_seqlens=True)
    for s in ds:
        first = int(s["input_ids"][0])
        cu = s["cu_seqlens"].tolist()
        inner = [first + i for i in range(1, 8) if first + i in doc_starts]
        assert cu == [0] + [t - first for t in inner] + [8]
        assert s["cu_seqlens"].dtype == torch.int32
        pos = s["position_ids"].tolist()
        for i in range(8):  # position = distance from the latest document start (or window start)
            last = max([0] + [c for c in cu[:-1] if c <= i])
            assert pos[i] == i - last
    batch = collate_packed([ds.window(0), ds.window(1)])
    assert batch["input_ids"].shape == batch["position_ids"].shape == (2, 8)
    # Window 0: tokens 0..7 (docs start at 3); window 1: 8..15 (docs start at 10, 11).
    assert batch["cu_seqlens"].tolist() == [0, 3, 8, 10, 11, 16]
    assert batch["max_seqlen"] == 5


def test_dataloader_without_workers_resumes(tmp_path):
    folder = make_folder(tmp_path, [30] * 20)
    ds = PackedDataset(folder, seq_len=16, seed=3)
    loader = DataLoader(ds, batch_size=4)
    all_batches = [b["input_ids"] for b in loader]
    assert len(all_batches) == len(loader) == 10  # 37 windows -> 9 full batches + 1
    ds2 = PackedDataset(folder, seq_len=16, seed=3)
    loader2 = DataLoader(ds2, batch_size=4)
    it = iter(loader2)
    head = [next(it)["input_ids"] for _ in range(3)]
    state = ds2.state_dict()
    assert state["position"] == 12  # num_workers=0: nothing fetched ahead
    ds3 = PackedDataset(folder, seq_len=16, seed=3)
    ds3.load_state_dict(state)
    tail = [b["input_ids"] for b in DataLoader(ds3, batch_size=4)]
    assert all(torch.equal(a, b) for a, b in zip(head + tail, all_batches[:3] + all_batches[3:]))
    assert len(head + tail) == len(all_batches)


def test_dataloader_workers_split_windows(tmp_path):
    folder = make_folder(tmp_path, [30] * 20)
    ds = PackedDataset(folder, seq_len=16, seed=3, shuffle=False)
    starts = [int(x) for b in DataLoader(ds, batch_size=2, num_workers=2) for x in b["input_ids"][:, 0]]
    assert sorted(starts) == list(range(0, 37 * 16, 16))


def test_errors(tmp_path):
    folder = make_folder(tmp_path, [5, 5])
    with pytest.raises(UsageError, match=r"10 tokens, fewer than one window of seq_len \+ 1 = 11"):
        PackedDataset(folder, seq_len=10)
    with pytest.raises(UsageError, match="rank 2 is not in range"):
        PackedDataset(folder, seq_len=2, rank=2, world_size=2)
    with pytest.raises(UsageError, match="split 'test' not in"):
        PackedDataset(folder, split="test", seq_len=2)
    with pytest.raises(UsageError, match="does not exist"):
        PackedDataset(tmp_path / "missing", seq_len=2)
    with pytest.raises(UsageError, match="no manifest.json"):
        PackedDataset(tmp_path, seq_len=2)
    ds = PackedDataset(folder, seq_len=2)
    state = ds.state_dict()
    with pytest.raises(UsageError, match="saved with seq_len=2 but this dataset has seq_len=3"):
        PackedDataset(folder, seq_len=3).load_state_dict(state)
    with pytest.raises(UsageError, match="world_size"):
        PackedDataset(folder, seq_len=2, world_size=2).load_state_dict(state)


def test_on_a_real_tokenized_corpus(tmp_path, small_corpus, wordpiece_tokenizer):
    from turing_models.data import tokenize_corpus

    out = tokenize_corpus(small_corpus, tmp_path / "wp", tokenizer=wordpiece_tokenizer, progress=False)
    ds = PackedDataset(out, split="val", seq_len=32, shuffle=False, return_cu_seqlens=True)
    s = ds.window(0)
    sep = wordpiece_tokenizer.sep_token_id  # WordPiece has no eos: documents end with [SEP]
    ends = (s["input_ids"] == sep).nonzero().flatten() + 1
    assert set(ends.tolist()) - {32} <= set(s["cu_seqlens"].tolist())
    assert len(ds) == (ds.num_tokens - 1) // 32
