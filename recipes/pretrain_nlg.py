#!/usr/bin/env python
"""Pretrain a TuringNLG decoder (causal language modelling) with the shared Trainer.

    # the 5-minute CPU demo: tiny model on the bundled Shakespeare corpus, then a sample
    python recipes/pretrain_nlg.py --config tiny.yaml --demo true

    # any field can be overridden; --dry-run prints parameters, FLOPs, memory per GPU and time
    python recipes/pretrain_nlg.py --config 17b.yaml --dry-run true --plan.gpus 256
    python recipes/pretrain_nlg.py --config 125m.yaml --data.shards data_cache/web --train.lr 3e-4

    # several GPUs / nodes: Accelerate picks the engine (DDP, FSDP2, DeepSpeed ZeRO)
    accelerate launch --config_file recipes/configs/distributed/zero3.yaml \\
        recipes/pretrain_nlg.py --config 17b.yaml --data.shards data_cache/web

    # resume the newest complete checkpoint of the run (or pass a step-* folder)
    python recipes/pretrain_nlg.py --config tiny.yaml --resume auto

Bare config names resolve in recipes/configs/nlg/. Output: checkpoints/runs/<run_name>/
(checkpoints/, metrics.jsonl, final/ = save_pretrained folder with the tokenizer).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import torch  # noqa: E402

from turing_models.errors import UsageError, cli_main  # noqa: E402
from turing_models.training import Trainer, TrainerConfig  # noqa: E402
from turing_models.training.config import parse_config  # noqa: E402
from turing_models.training.plan import PlanConfig  # noqa: E402
from turing_models.training.pretrain import (  # noqa: E402
    DataSection,
    GenerateSection,
    ModelSection,
    check_overrides,
    prepare_tokens,
    print_plan,
    train_evaluate_export,
    unigram_perplexity,
)


@dataclass
class PretrainNLGConfig:
    """Pretrain a TuringNLG decoder."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(corpus="recipes/data/tinyshakespeare.txt"))
    train: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_name="nlg-tiny"))
    plan: PlanConfig = field(default_factory=PlanConfig)
    generate: GenerateSection = field(default_factory=GenerateSection)
    dry_run: bool = False
    """Validate the config and print the plan (parameters, FLOPs, memory, time); do not train."""
    resume: Optional[str] = None
    """``auto`` (newest complete checkpoint of this run, if any) or a checkpoint folder."""
    demo: bool = False
    """Also print the unigram baseline and a sample generation at the end."""


def build_model_config(cfg: PretrainNLGConfig):
    from turing_models.nlg import TuringNLGConfig

    check_overrides(cfg.model.overrides, TuringNLGConfig)
    kwargs = dict(cfg.model.overrides)
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    return TuringNLGConfig.from_name(cfg.model.scale, **kwargs)


@cli_main
def main(argv: Optional[list[str]] = None) -> dict:
    import os

    cfg = parse_config(PretrainNLGConfig, argv, family="nlg", prog="pretrain_nlg.py")
    from turing_models.nlg import TuringNLGForCausalLM

    model_config = build_model_config(cfg)
    seq_len = cfg.data.seq_len or model_config.max_position_embeddings
    if seq_len > model_config.max_position_embeddings:
        raise UsageError(f"data.seq_len={seq_len} exceeds the model's context "
                         f"max_position_embeddings={model_config.max_position_embeddings}; lower it")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.train.validate(world)

    if cfg.dry_run:
        with torch.device("meta"):
            model = TuringNLGForCausalLM(model_config)
        print(f"config OK: TuringNLG {cfg.model.scale}, run '{cfg.train.run_name}', engine "
              f"{cfg.train.distributed}, precision {cfg.train.precision}")
        print(print_plan(model, cfg.train, cfg.plan, seq_len))
        return {"dry_run": True}

    from accelerate import PartialState

    from turing_models.data import PackedDataset, load_tokenizer

    started = time.perf_counter()
    state = PartialState()
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if len(tokenizer) > model_config.vocab_size:
        raise UsageError(f"tokenizer '{cfg.data.tokenizer}' has {len(tokenizer)} tokens but the model only "
                         f"{model_config.vocab_size} embedding rows; raise model.overrides.vocab_size")
    tokens = prepare_tokens(cfg.data, seq_len, progress=cfg.train.progress)
    rank, world = state.process_index, state.num_processes
    train_ds = PackedDataset(tokens, "train", seq_len=seq_len, seed=cfg.train.seed, shuffle=True, rank=rank,
                             world_size=world)
    val_ds = PackedDataset(tokens, "val", seq_len=seq_len, shuffle=False, rank=rank, world_size=world)

    torch.manual_seed(cfg.train.seed)
    model = TuringNLGForCausalLM(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    if state.is_main_process:
        print(f"TuringNLG {cfg.model.scale}: {n_params / 1e6:.1f} M parameters, sequence {seq_len}, "
              f"{train_ds.tokens_per_epoch:,} training tokens per epoch, "
              f"{cfg.train.global_batch_size * seq_len:,} tokens per step")
    trainer = Trainer(model, train_ds, val_ds, config=cfg.train, tokenizer=tokenizer)
    summary, result = train_evaluate_export(trainer, cfg, state.is_main_process)
    if result is None:
        return summary
    final = summary["final"]
    if state.is_main_process:
        print(f"validation loss {result['eval_loss']:.4f}, perplexity {result['eval_ppl']:.1f}")
        if cfg.demo:
            baseline = unigram_perplexity(tokens, len(tokenizer))
            summary["unigram_ppl"] = baseline
            print(f"unigram baseline perplexity {baseline:.1f} (the model: {result['eval_ppl']:.1f}, "
                  f"{baseline / result['eval_ppl']:.1f}x lower)")
            print(f"final checkpoint: {final}")
            print(sample(trainer.unwrapped_model, tokenizer, cfg.generate))
            print(f"done in {time.perf_counter() - started:.0f} s")
    return summary


def sample(model, tokenizer, gen: GenerateSection) -> str:
    model.eval()
    inputs = tokenizer(gen.prompt, return_tensors="pt").to(next(model.parameters()).device)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=gen.max_new_tokens, do_sample=True,
                             temperature=gen.temperature, top_k=gen.top_k,
                             pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    return f"--- sample (prompt {gen.prompt!r}) ---\n{text}\n---"


if __name__ == "__main__":
    main()
