"""Pretraining, shared by the families: the recipe configs, data preparation, the ``--dry-run``
plan and :func:`run_pretrain`. ``recipes/pretrain_nlg.py`` (TuringNLG, causal LM) and
``recipes/pretrain_nlu.py`` (TuringNLU, masked LM or ELECTRA) are thin scripts over it:

    run_pretrain("nlg", ["--config", "tiny.yaml", "--train.max_steps", "20"])

What differs between the families is one :class:`Family` entry in :data:`FAMILIES`: the config
dataclass, how the model config is built from the scale, overrides and tokenizer, the collator,
and what is printed at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch

from ..errors import UsageError
from .config import TrainerConfig, parse_config, resolve_recipe_path, unknown_key_error
from .plan import PlanConfig

#: The bundled corpus the tiny recipes train on (shipped with the recipes).
DEFAULT_CORPUS = "recipes/data/tinyshakespeare.txt"


# ----------------------------------------------------------------------------- config sections


@dataclass
class ModelSection:
    """Which model to build."""

    scale: str = "tiny"
    """A named scale of the family (NLG_SCALES / NLU_SCALES)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields to change, e.g. ``{hidden_dropout: 0.0}``; unknown fields are an error."""
    attn_implementation: Optional[str] = None
    """``turing``, ``sdpa`` or ``eager``; default: turing on CUDA with Triton, else sdpa."""


@dataclass
class NLUModelSection(ModelSection):
    """Which encoder to build and how to pretrain it."""

    objective: Literal["mlm", "electra"] = "mlm"
    """``mlm``: masked LM; ``electra``: replaced-token detection with a small generator."""


@dataclass
class DataSection:
    """Where the tokens come from: prepared shards, or a text corpus tokenized on first use."""

    corpus: Optional[str] = None
    """Text/JSONL/Parquet file(s) or folder, tokenized into ``cache_dir`` on first use (cached)."""
    shards: Optional[str] = None
    """A folder written by ``prepare_data.py tokenize`` (takes precedence over corpus)."""
    val_shards: Optional[str] = None
    """Another token folder to validate on (its ``val`` split, or its ``train`` split when it has
    no validation documents); default: the ``val`` split of the training tokens."""
    tokenizer: str = "gpt2-bpe"
    seq_len: Optional[int] = None
    """Tokens per sequence; default: the model's context length."""
    cache_dir: str = "data_cache"
    val_fraction: float = 0.05


@dataclass
class GenerateSection:
    """The sample printed at the end of a demo run."""

    prompt: str = "ROMEO:"
    max_new_tokens: int = 60
    temperature: float = 0.8
    top_k: int = 40
    eos_as: Optional[str] = None
    """None: stop at the end-of-document token. A string: sample past it and print it as this
    string (the demo's documents are paragraphs, so a blank line)."""


@dataclass
class MaskingSection:
    mlm_probability: float = 0.15
    whole_word_mask: bool = True


@dataclass
class PretrainNLGConfig:
    """Pretrain a TuringNLG decoder."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(corpus=DEFAULT_CORPUS))
    train: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_name="nlg-tiny"))
    plan: PlanConfig = field(default_factory=PlanConfig)
    generate: GenerateSection = field(default_factory=GenerateSection)
    dry_run: bool = False
    """Validate the config and print the plan (parameters, FLOPs, memory, time); do not train."""
    json: bool = False
    """With --dry-run: print the plan as JSON."""
    resume: Optional[str] = None
    """``auto`` (newest complete checkpoint of this run, if any) or a checkpoint folder."""
    demo: bool = False
    """Also print the unigram baseline and a sample generation at the end."""


@dataclass
class PretrainNLUConfig:
    """Pretrain a TuringNLU encoder."""

    model: NLUModelSection = field(default_factory=NLUModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(
        corpus=DEFAULT_CORPUS, tokenizer="bert-wordpiece", seq_len=128))
    masking: MaskingSection = field(default_factory=MaskingSection)
    train: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_name="nlu-tiny"))
    plan: PlanConfig = field(default_factory=PlanConfig)
    dry_run: bool = False
    """Validate the config and print the plan; do not train."""
    json: bool = False
    """With --dry-run: print the plan as JSON."""
    resume: Optional[str] = None
    """``auto`` or a checkpoint folder."""


# ----------------------------------------------------------------------------- pieces


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists; the recipes' bundled ``recipes/...`` defaults resolve in
    the installed recipes folder (so they work from any working directory)."""
    return resolve_recipe_path(path)


def check_overrides(overrides: dict[str, Any], config_cls: type, section: str = "model.overrides") -> None:
    """Refuse override keys the model config does not have, naming the closest one."""
    valid = sorted(k for k in config_cls().to_dict() if not k.startswith("_"))
    for key in overrides:
        if key not in valid:
            raise unknown_key_error(f"{section}.{key}", [f"{section}.{k}" for k in valid])


def prepare_tokens(data: DataSection, seq_len: int, *, progress: bool = True) -> Path:
    """The token folder for ``data``: the given shards, or the corpus tokenized once into the cache
    (the main process tokenizes while the others wait)."""
    from accelerate import PartialState

    if data.shards:
        path = resolve_path(data.shards)
        if not path.is_dir():
            raise UsageError(f"data.shards folder {data.shards} does not exist; run recipes/prepare_data.py "
                             "tokenize first or set data.corpus")
        return path
    if not data.corpus:
        raise UsageError("no training data: set data.corpus (a text file) or data.shards (prepared tokens)")
    corpus = resolve_path(data.corpus)
    if not corpus.exists():
        raise UsageError(f"data.corpus {data.corpus} does not exist; give a text file, folder or glob")
    from turing_models.data import tokenize_corpus

    state = PartialState()
    with state.main_process_first():
        return Path(tokenize_corpus(corpus, tokenizer=data.tokenizer, val_fraction=data.val_fraction,
                                    seq_len=seq_len, cache_dir=Path(data.cache_dir),
                                    progress=progress and state.is_main_process))


def validation_tokens(data: DataSection, train_tokens: Path) -> tuple[Path, str]:
    """``(folder, split)`` to validate on: ``data.val_shards`` when given (its ``val`` split, or
    its ``train`` split when that folder has no validation documents), else the training tokens'
    ``val`` split. The folders must come from the same tokenizer."""
    from turing_models.data import read_manifest

    if not data.val_shards:
        return train_tokens, "val"
    path = resolve_path(data.val_shards)
    if not path.is_dir():
        raise UsageError(f"data.val_shards folder {data.val_shards} does not exist; tokenize the validation "
                         "text with recipes/prepare_data.py tokenize first")
    theirs, ours = read_manifest(path), read_manifest(train_tokens)
    if theirs["tokenizer"]["sha256"] != ours["tokenizer"]["sha256"]:
        raise UsageError(f"data.val_shards {data.val_shards} was tokenized with another tokenizer "
                         f"({theirs['tokenizer']['name_or_path']!r}) than the training tokens "
                         f"({ours['tokenizer']['name_or_path']!r}); tokenize it with the same --tokenizer")
    return path, "val" if theirs["splits"]["val"]["documents"] else "train"


def unigram_perplexity(path: Path, vocab_size: int, val: Optional[tuple[Path, str]] = None) -> float:
    """Perplexity of the validation targets under the training split's unigram distribution
    (add-one smoothed): the number a model must beat to have learnt anything beyond frequencies."""
    from turing_models.data import load_split

    train, _, _ = load_split(path, "train")
    targets, _, _ = load_split(*(val or (path, "val")))
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[np.asarray(targets[1:], dtype=np.int64)].mean()))


def print_plan(model: torch.nn.Module, train: TrainerConfig, plan: PlanConfig, seq_len: int,
               as_json: bool = False) -> str:
    """The dry-run report (text, or JSON) for a model built on the meta device."""
    from .plan import plan_for_model, render_plan

    data = plan_for_model(model, train, plan, seq_len)
    return json.dumps(data, indent=2, default=str) if as_json else render_plan(data)


def train_evaluate_export(trainer, cfg, is_main_process: bool) -> tuple[dict, Optional[dict]]:
    """The common tail of a pretraining recipe: fit (resuming as ``cfg.resume`` says, writing
    ``config.yaml``), then evaluate and write the consolidated ``final/`` folder.

    Returns ``(summary, eval_result)``. A run stopped early (SIGTERM, Ctrl-C) has written a
    checkpoint and exports nothing: it raises :class:`~turing_models.errors.Preempted` (exit 143).
    """
    fit_started = time.perf_counter()
    summary = trainer.fit(resume=cfg.resume, run_config=cfg)  # also writes run_dir/config.yaml
    summary["train_seconds"] = time.perf_counter() - fit_started
    if summary["status"] != "completed":
        from ..errors import Preempted

        stopped = Preempted(f"{summary.get('signal') or 'a signal'} stopped training at step {summary['step']}: "
                            "checkpoint saved; rerun with --resume auto to continue")
        if summary.get("signal") == "SIGINT":
            stopped.exit_status = 130  # Ctrl-C: the shell's usual status
        raise stopped
    result = trainer.evaluate()
    final = trainer.save_final()
    summary.update(result, final=str(final))
    return summary, result


def sample(model, tokenizer, gen: GenerateSection) -> str:
    """A sampled continuation of ``gen.prompt`` (seeded), framed for printing."""
    model.eval()
    inputs = tokenizer(gen.prompt, return_tensors="pt").to(next(model.parameters()).device)
    torch.manual_seed(0)
    extra = {"eos_token_id": None} if gen.eos_as is not None else {}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=gen.max_new_tokens, do_sample=True,
                             temperature=gen.temperature, top_k=gen.top_k, pad_token_id=tokenizer.eos_token_id,
                             **extra)
    if gen.eos_as is not None and tokenizer.eos_token_id is not None:
        ids = out[0].tolist()
        pieces, start = [], 0
        for i, tok in enumerate(ids + [tokenizer.eos_token_id]):
            if tok == tokenizer.eos_token_id:
                pieces.append(tokenizer.decode(ids[start:i], skip_special_tokens=True))
                start = i + 1
        text = gen.eos_as.join(pieces).rstrip()
    else:
        text = tokenizer.decode(out[0], skip_special_tokens=True)
    return (f"--- sample (prompt {gen.prompt!r}, temperature {gen.temperature}, top-k {gen.top_k}) ---\n"
            f"{text}\n---")


@torch.no_grad()
def per_character_loss(model, dataset, tokenizer, batch_size: int = 16) -> dict[str, float]:
    """Loss over every window of ``dataset`` (a :class:`PackedDataset`), per token and per character
    of the text the target tokens spell (special tokens such as the document separator count no
    characters, so the per-character figure is, if anything, pessimistic). Per character, models
    with different tokenizers compare: ``bits_per_char = nats_per_char / ln 2``."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    lengths = torch.tensor([0 if i in special else len(piece) for i, piece in enumerate(pieces)], dtype=torch.long)
    nats, tokens, chars = 0.0, 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        targets = batch["shift_labels"]
        logits = model(input_ids=batch["input_ids"].to(device)).logits.float()
        nats += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1), reduction="sum"))
        tokens += targets.numel()
        chars += int(lengths[targets.clamp(max=len(lengths) - 1)].sum())
    model.train(was_training)
    per_char = nats / max(chars, 1)
    per_token = nats / max(tokens, 1)
    return {"nats_per_token": per_token, "nats_per_char": per_char, "bits_per_char": per_char / math.log(2),
            "ppl": math.exp(min(per_token, 50.0)), "tokens": tokens, "chars": chars}


# ----------------------------------------------------------------------------- the families


def _nlg_model_config(cfg: PretrainNLGConfig, tokenizer=None):
    from turing_models.nlg import TuringNLGConfig

    check_overrides(cfg.model.overrides, TuringNLGConfig)
    kwargs = dict(cfg.model.overrides)
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    config = TuringNLGConfig.from_name(cfg.model.scale, **kwargs)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise UsageError(f"tokenizer '{cfg.data.tokenizer}' has {len(tokenizer)} tokens but the model only "
                         f"{config.vocab_size} embedding rows; raise model.overrides.vocab_size")
    return config


def _nlu_model_config(cfg: PretrainNLUConfig, tokenizer=None):
    from turing_models.nlu import TuringNLUConfig

    check_overrides(cfg.model.overrides, TuringNLUConfig)
    kwargs: dict[str, Any] = {}
    if tokenizer is not None:
        if tokenizer.mask_token_id is None:
            raise UsageError(f"tokenizer '{cfg.data.tokenizer}' has no mask token; use an encoder tokenizer "
                             "such as bert-wordpiece")
        kwargs.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    kwargs.update(cfg.model.overrides)
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    return TuringNLUConfig.from_name(cfg.model.scale, pretraining_objective=cfg.model.objective, **kwargs)


def _nlu_collator(cfg: PretrainNLUConfig, tokenizer, rank: int):
    from turing_models.data import DataCollatorForMLM, PackedMLMCollator

    return PackedMLMCollator(DataCollatorForMLM(
        tokenizer, mlm_probability=cfg.masking.mlm_probability, whole_word_mask=cfg.masking.whole_word_mask,
        seed=cfg.train.seed + rank))


def _nlg_report(cfg: PretrainNLGConfig, trainer, tokenizer, result: dict, summary: dict, data: dict) -> None:
    print(f"validation loss {result['eval_loss']:.4f}, perplexity {result['eval_ppl']:.1f}")
    if cfg.demo:
        baseline = unigram_perplexity(data["train"], len(tokenizer), data["val"])
        summary["unigram_ppl"] = baseline
        print(f"unigram baseline perplexity {baseline:.1f} (the model: {result['eval_ppl']:.1f}, "
              f"{baseline / result['eval_ppl']:.1f}x lower)")
        chars = per_character_loss(trainer.unwrapped_model, trainer.eval_dataset, tokenizer)
        summary.update({k: chars[k] for k in ("nats_per_char", "bits_per_char")})
        print(f"whole validation split: {chars['nats_per_token']:.3f} nats/token (perplexity {chars['ppl']:.1f}) "
              f"= {chars['nats_per_char']:.3f} nats/char = {chars['bits_per_char']:.3f} bits/char over "
              f"{chars['chars']:,} characters ({chars['chars'] / chars['tokens']:.2f} characters/token)")
        if "train_seconds" in summary:
            seconds = summary["train_seconds"]
            print(f"training: {summary['step']} steps, {summary['tokens']:,} tokens in {seconds:.0f} s "
                  f"({summary['tokens'] / seconds:,.0f} tokens/s)")
        print(f"final checkpoint: {summary['final']}")
        print(sample(trainer.unwrapped_model, tokenizer, cfg.generate))


def _nlu_report(cfg: PretrainNLUConfig, trainer, tokenizer, result: dict, summary: dict, data: dict) -> None:
    print(f"validation loss {result['eval_loss']:.4f} ({cfg.model.objective})")


def _nlg_model_class():
    from turing_models.nlg import TuringNLGForCausalLM

    return TuringNLGForCausalLM


def _nlu_model_class():
    from turing_models.nlu import TuringNLUForPreTraining

    return TuringNLUForPreTraining


@dataclass(frozen=True)
class Family:
    """What :func:`run_pretrain` needs to know about a model family."""

    name: str
    config_cls: type
    model_config: Callable[..., Any]
    """``(cfg, tokenizer or None) -> PretrainedConfig`` (None: the dry run, before any data)."""
    model_class: Callable[[], type]
    describe: Callable[[Any], str]
    collator: Optional[Callable[..., Any]] = None
    """``(cfg, tokenizer, rank) -> collate_fn``; None: the trainer's default."""
    report: Optional[Callable[..., None]] = None
    """What the main process prints after the final evaluation."""


FAMILIES: dict[str, Family] = {
    "nlg": Family("TuringNLG", PretrainNLGConfig, _nlg_model_config, _nlg_model_class,
                  lambda cfg: f"TuringNLG {cfg.model.scale}", report=_nlg_report),
    "nlu": Family("TuringNLU", PretrainNLUConfig, _nlu_model_config, _nlu_model_class,
                  lambda cfg: f"TuringNLU {cfg.model.scale} ({cfg.model.objective})", collator=_nlu_collator,
                  report=_nlu_report),
}


def _seq_len(cfg, model_config) -> int:
    seq_len = cfg.data.seq_len or model_config.max_position_embeddings
    if seq_len > model_config.max_position_embeddings:
        raise UsageError(f"data.seq_len={seq_len} exceeds the model's context "
                         f"max_position_embeddings={model_config.max_position_embeddings}; lower it")
    return seq_len


def run_pretrain(family: str, argv: Optional[list[str]] = None, *, description: Optional[str] = None) -> dict:
    """Parse a pretraining recipe's command line for ``family`` (``"nlg"`` or ``"nlu"``), then
    plan (``--dry-run``) or train, evaluate and export. Returns the run's summary.
    ``description`` heads ``--help`` (the recipes pass their docstring, with its examples)."""
    spec = FAMILIES[family]
    cfg = parse_config(spec.config_cls, argv, family=family, prog=f"pretrain_{family}.py", description=description)
    model_class = spec.model_class()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.dry_run and "WORLD_SIZE" not in os.environ and cfg.train.parallel.active:
        world = cfg.plan.gpus  # a dry run checks a TP / HSDP layout against the planned job's size
    cfg.train.validate(world)

    if cfg.dry_run:
        model_config = spec.model_config(cfg)
        seq_len = _seq_len(cfg, model_config)
        with torch.device("meta"):
            model = model_class(model_config)
        if not cfg.json:
            print(f"config OK: {spec.describe(cfg)}, run '{cfg.train.run_name}', engine "
                  f"{cfg.train.distributed}, precision {cfg.train.precision}")
        print(print_plan(model, cfg.train, cfg.plan, seq_len, as_json=cfg.json))
        return {"dry_run": True}

    from accelerate import PartialState

    from turing_models.data import PackedDataset, load_tokenizer

    from .trainer import Trainer

    started = time.perf_counter()
    state = PartialState()
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    model_config = spec.model_config(cfg, tokenizer)
    seq_len = _seq_len(cfg, model_config)
    tokens = prepare_tokens(cfg.data, seq_len, progress=cfg.train.progress)
    val_tokens = validation_tokens(cfg.data, tokens)
    from .parallel import data_parallel_rank_for

    # the data-parallel rank: the ranks of one tensor-parallel group read the same windows
    rank, world = data_parallel_rank_for(cfg.train.parallel, state.process_index, state.num_processes)
    train_ds = PackedDataset(tokens, "train", seq_len=seq_len, seed=cfg.train.seed, shuffle=True, rank=rank,
                             world_size=world)
    val_ds = PackedDataset(val_tokens[0], val_tokens[1], seq_len=seq_len, shuffle=False, rank=rank,
                           world_size=world)
    collate_fn = spec.collator(cfg, tokenizer, rank) if spec.collator else None

    torch.manual_seed(cfg.train.seed)
    model = model_class(model_config)
    if state.is_main_process:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{spec.describe(cfg)}: {n_params / 1e6:.1f} M parameters, sequence {seq_len}, "
              f"{train_ds.tokens_per_epoch:,} training tokens per epoch, "
              f"{cfg.train.global_batch_size * seq_len:,} tokens per step")
    trainer = Trainer(model, train_ds, val_ds, config=cfg.train, collate_fn=collate_fn, tokenizer=tokenizer)
    summary, result = train_evaluate_export(trainer, cfg, state.is_main_process)
    if result is not None and state.is_main_process and spec.report is not None:
        spec.report(cfg, trainer, tokenizer, result, summary, {"train": tokens, "val": val_tokens})
        if getattr(cfg, "demo", False):
            print(f"done in {time.perf_counter() - started:.0f} s")
    return summary
