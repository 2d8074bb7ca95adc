#!/usr/bin/env python
"""The demo recipe against a character-level GPT, each trained for the same wall-clock time.

* demo: ``recipes/configs/nlg/demo.yaml`` (a 4-layer, 256-wide TuringNLG on a 1,024-entry BPE that
  ``prepare_data.py tokenizer`` trains on the corpus), with that recipe's batch, learning rate
  and warm-up;
* baseline: a plain small GPT on characters as nanoGPT's CPU Shakespeare recipe has it (4 layers,
  4 heads, 128 wide, context 64, batch 12, lr 1e-3 to 1e-4, beta2 0.99, no dropout), on
  byte-level tokens (a BPE with no merges; the corpus is ASCII, so a byte is a character).

Both are TuringNLG models trained by the same Trainer on the same corpus split. Their steps
alternate in one process so that both see the same machine load, and each has its own clock: it
trains until the time spent in its own steps reaches the budget, with its learning rate on a
warm-up + cosine schedule over that time (the step count is not known in advance on a shared
machine). Then both are scored over the whole validation split in nats per character of the
validation text, which compares across tokenizers.

    python benchmarks/demo.py                 # 300 s each (about 10 minutes in all)
    python benchmarks/demo.py --budget 60     # quicker, noisier
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CORPUS = ROOT / "recipes" / "data" / "tinyshakespeare.txt"

#: nanoGPT's CPU Shakespeare-char settings (its README), on the same trainer
CHAR_BASELINE = dict(layers=4, heads=4, hidden=128, seq_len=64, batch=12, lr=1e-3, min_lr_ratio=0.1,
                     warmup_fraction=100 / 2000, beta2=0.99, weight_decay=0.1)


def ensure_tokenizer(path: Path, vocab_size: int) -> Path:
    """Train a byte-level BPE of ``vocab_size`` on the corpus into ``path`` unless it is there."""
    from turing_models.data.sources import iter_documents, resolve_inputs
    from turing_models.data.tokenizer import train_tokenizer

    if not (path / "tokenizer.json").is_file():
        sources = resolve_inputs([str(CORPUS)], format="auto", field="text", text_split="paragraph")
        texts = (doc for src in sources for doc in iter_documents(src))
        train_tokenizer(texts, kind="bpe", vocab_size=vocab_size, output_dir=path)
    return path


class Clocked:
    """One model under training: a Trainer whose steps are timed and whose LR follows the time."""

    def __init__(self, name, trainer, budget: float, lr: float, min_lr_ratio: float, warmup_fraction: float):
        self.name, self.trainer, self.budget = name, trainer, budget
        self.lr, self.min_lr_ratio, self.warmup = lr, min_lr_ratio, warmup_fraction
        self.seconds = 0.0
        self.steps = 0
        trainer.scheduler = _Fixed(trainer)  # the LR is set here, from the clock

    def factor(self) -> float:
        t = min(self.seconds / self.budget, 1.0)
        if t < self.warmup:
            return max(t / self.warmup, 0.02)
        progress = (t - self.warmup) / (1 - self.warmup)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    @property
    def done(self) -> bool:
        return self.seconds >= self.budget

    def step(self) -> None:
        for group in self.trainer._base_optimizer().param_groups:
            group["lr"] = self.lr * self.factor()
        start = time.perf_counter()
        self.trainer.train_step()
        self.seconds += time.perf_counter() - start
        self.steps += 1


class _Fixed:
    """Stands in for the trainer's step-based scheduler: leaves the LR as :class:`Clocked` set it."""

    def __init__(self, trainer):
        self.trainer = trainer

    def step(self) -> None:
        pass

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.trainer._base_optimizer().param_groups]


def build(name, tokenizer, tokens: Path, *, layers, heads, hidden, seq_len, batch, lr, min_lr_ratio,
          warmup_fraction, beta2, weight_decay, budget, out: Path) -> Clocked:
    from turing_models.data import PackedDataset
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training import Trainer, TrainerConfig

    vocab = len(tokenizer)
    config = TuringNLGConfig.from_name(
        "tiny", vocab_size=vocab, real_vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=seq_len, hidden_dropout=0.0, attention_dropout=0.0,
        initializer_range=round(math.sqrt(1.0 / (3.0 * hidden)), 6),
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = TuringNLGForCausalLM(config)
    train = PackedDataset(tokens, "train", seq_len=seq_len, seed=0)
    val = PackedDataset(tokens, "val", seq_len=seq_len, shuffle=False)
    cfg = TrainerConfig(run_name=name, output_dir=str(out), max_steps=10**9, global_batch_size=batch,
                        micro_batch_size=batch, lr=lr, weight_decay=weight_decay, beta2=beta2, grad_clip=1.0,
                        progress=False, tensorboard=False)
    return Clocked(name, Trainer(model, train, val, config=cfg, tokenizer=tokenizer), budget, lr, min_lr_ratio,
                   warmup_fraction)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=300.0, help="training seconds per model (default 300)")
    p.add_argument("--config", default="demo.yaml", help="the demo recipe (default demo.yaml)")
    p.add_argument("--cache", default=str(ROOT / "data_cache"), help="tokenizers and token folders go here")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from turing_models.data import load_tokenizer, tokenize_corpus
    from turing_models.training.config import parse_config
    from turing_models.training.pretrain import PretrainNLGConfig, per_character_loss

    cfg = parse_config(PretrainNLGConfig, ["--config", args.config], family="nlg", prog="demo.py")
    cache = Path(args.cache)
    overrides = cfg.model.overrides
    demo_tok_dir = Path(cfg.data.tokenizer)
    if not demo_tok_dir.is_absolute() and demo_tok_dir.parts[0] == "data_cache":
        demo_tok_dir = cache.joinpath(*demo_tok_dir.parts[1:])
    demo_tok = load_tokenizer(ensure_tokenizer(demo_tok_dir, overrides["vocab_size"]))
    char_tok = load_tokenizer(ensure_tokenizer(cache / "tokenizers" / "shakespeare-bytes", 257))
    seq_len = cfg.data.seq_len
    demo_tokens = Path(tokenize_corpus(CORPUS, tokenizer=str(demo_tok_dir), seq_len=seq_len, cache_dir=cache,
                                       progress=False))
    char_tokens = Path(tokenize_corpus(CORPUS, tokenizer=str(cache / "tokenizers" / "shakespeare-bytes"),
                                       seq_len=CHAR_BASELINE["seq_len"], cache_dir=cache, progress=False))

    t = cfg.train
    out = cache / "bench-demo-runs"
    runs = [
        build("demo", demo_tok, demo_tokens, layers=overrides["num_hidden_layers"],
              heads=overrides["num_attention_heads"], hidden=overrides["hidden_size"], seq_len=seq_len,
              batch=t.global_batch_size, lr=t.lr, min_lr_ratio=t.min_lr_ratio,
              warmup_fraction=t.warmup_steps / t.max_steps, beta2=t.beta2, weight_decay=t.weight_decay,
              budget=args.budget, out=out),
        build("char", char_tok, char_tokens, budget=args.budget, out=out, **CHAR_BASELINE),
    ]
    print(f"training each model for {args.budget:.0f} s of its own steps, alternating; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    while not all(r.done for r in runs):
        for r in runs:
            if not r.done:
                r.step()

    rows = {}
    for r, tok in zip(runs, (demo_tok, char_tok)):
        trainer = r.trainer
        score = per_character_loss(trainer.unwrapped_model, trainer.eval_dataset, tok)
        seq = trainer.eval_dataset.seq_len
        tokens = r.steps * trainer.config.global_batch_size * seq
        params = sum(p.numel() for p in trainer.unwrapped_model.parameters())
        rows[r.name] = dict(score, steps=r.steps, tokens_seen=tokens, seconds=r.seconds, params=params,
                            tokens_per_s=tokens / r.seconds)
    labels = {"demo": f"demo ({args.config}, BPE {len(demo_tok)})", "char": "nanoGPT-style char GPT"}
    print(f"{'model':<30} {'params':>8} {'steps':>6} {'tokens/s':>9} {'nats/token':>10} {'nats/char':>9} "
          f"{'bits/char':>9}")
    for name, row in rows.items():
        print(f"{labels[name]:<30} {row['params'] / 1e6:7.2f}M {row['steps']:6d} {row['tokens_per_s']:9,.0f} "
              f"{row['nats_per_token']:10.3f} {row['nats_per_char']:9.3f} {row['bits_per_char']:9.3f}")
    ratio = rows["char"]["nats_per_char"] / rows["demo"]["nats_per_char"]
    print(f"after {args.budget:.0f} s each: char baseline / demo loss per character = {ratio:.2f}x "
          f"(above 1: the demo is better); validation text: {rows['demo']['chars']:,} characters")
    print("reproduce: python benchmarks/demo.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return {"rows": rows, "ratio": ratio}


if __name__ == "__main__":
    main()
