"""The demo recipe keeps learning: its model, tokenizer kind and optimiser settings, trained for a
few dozen steps through the real recipe, beat the unigram baseline by a clear margin, and the
per-character score counts the characters of the validation text."""

import math

import pytest

from turing_models.data.tokenizer import train_tokenizer
from turing_models.training.pretrain import run_pretrain, unigram_perplexity

from _tiny import RECIPES

CORPUS = RECIPES / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    """The demo's tokenizer: a 1,024-entry byte-level BPE trained on the corpus (about 5 s)."""
    out = tmp_path_factory.mktemp("tok") / "shakespeare-bpe-1024"
    paragraphs = [p for p in CORPUS.read_text().split("\n\n") if p.strip()]
    train_tokenizer(iter(paragraphs), kind="bpe", vocab_size=1024, output_dir=out)
    return out


def test_demo_recipe_learns_in_a_few_steps(demo_tokenizer, tmp_path):
    # the recipe's model and optimiser; a smaller batch and 60 steps (31 k tokens) keep it short
    summary = run_pretrain("nlg", [
        "--config", "demo.yaml", "--data.tokenizer", str(demo_tokenizer), "--data.cache_dir", str(tmp_path / "cache"),
        "--data.seq_len", "128", "--train.output_dir", str(tmp_path / "runs"), "--train.max_steps", "60",
        "--train.global_batch_size", "4", "--train.micro_batch_size", "4", "--train.warmup_steps", "5",
        "--train.eval_steps", "8", "--train.progress", "false", "--train.tensorboard", "false",
    ])
    assert summary["status"] == "completed" and summary["step"] == 60
    tokens = next(p.parent for p in (tmp_path / "cache").rglob("manifest.json"))
    unigram = math.log(unigram_perplexity(tokens, 1024))  # nats/token of the frequencies alone
    # untrained: ln(1024) = 6.93 nats/token; unigram 5.84; 40 steps reached 5.59
    assert summary["eval_loss"] < unigram - 0.3, (summary["eval_loss"], unigram)


def test_per_character_loss_counts_the_text(demo_tokenizer, tmp_path):
    import torch

    from turing_models.data import PackedDataset, load_tokenizer, write_token_folder
    from turing_models.training.pretrain import per_character_loss

    tok = load_tokenizer(demo_tokenizer)
    docs = ["ROMEO:\nWhat light through yonder window breaks?", "JULIET:\nAy me!"] * 4
    ids = [tok(d)["input_ids"] + [tok.eos_token_id] for d in docs]
    folder = write_token_folder(tmp_path / "t", {"train": ids, "val": ids}, vocab_size=len(tok),
                                eos_token_id=tok.eos_token_id)
    flat = [i for doc in ids for i in doc]
    seq = 8
    ds = PackedDataset(folder, "val", seq_len=seq, shuffle=False)
    targets = flat[1:1 + ds.num_windows * seq]

    class Uniform(torch.nn.Module):  # every token equally likely: ln(V) nats per token
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, len(tok)) + self.w})()

    result = per_character_loss(Uniform(), ds, tok)
    chars = sum(len(tok.decode([t])) for t in targets if t != tok.eos_token_id)
    assert result["tokens"] == len(targets) and result["chars"] == chars
    assert result["nats_per_token"] == pytest.approx(math.log(len(tok)))
    assert result["nats_per_char"] == pytest.approx(math.log(len(tok)) * len(targets) / chars)
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
