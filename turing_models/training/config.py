"""Recipes are data: typed config dataclasses loaded from YAML + command-line overrides.

A recipe describes its settings as nested dataclasses; :func:`parse_config` builds a
`jsonargparse <https://jsonargparse.readthedocs.io>`_ parser from them, so every field can be set
in a YAML file (``--config tiny.yaml``) and overridden on the command line (``--train.lr 3e-4``),
with types checked and unknown keys refused. This module only adds what jsonargparse cannot know:

* **bare config names** resolve inside ``recipes/configs/<family>/``: ``--config 17b.yaml`` (or
  ``--config 17b``) finds ``recipes/configs/nlg/17b.yaml`` for ``pretrain_nlg.py``;
* **errors for people**: an unknown key names the closest valid one, a wrong type says which key
  expected what; both are raised as :class:`~turing_models.errors.UsageError` (one line, exit 2
  under :func:`~turing_models.errors.cli_main`);
* **batch arithmetic**: :func:`gradient_accumulation_steps` checks that
  ``global = micro x accumulation x world size`` and names the numbers when it does not divide.

Using it in a recipe (this is all ``recipes/finetune.py`` needs)::

    from dataclasses import dataclass, field
    from turing_models.training import TrainerConfig
    from turing_models.training.config import parse_config

    @dataclass
    class FinetuneConfig:
        task: str = "classification"
        train: TrainerConfig = field(default_factory=TrainerConfig)

    cfg = parse_config(FinetuneConfig, argv, family="finetune")   # -> a FinetuneConfig
    cfg.train.lr                                                   # typed values

:class:`TrainerConfig` is the trainer's own section (optimizer, schedule, precision, batch,
logging, evaluation, checkpoints, distributed engine); recipes embed it as ``train:``.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, TypeVar

from ..errors import UsageError

T = TypeVar("T")

#: ``recipes/configs`` of this checkout (the recipes and their configs ship with the repository).
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "recipes" / "configs"

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "linear", "constant"]
Engine = Literal["none", "ddp", "fsdp2", "zero2", "zero3", "zero3_offload"]


@dataclass
class TrainerConfig:
    """Everything the :class:`~turing_models.training.Trainer` owns. Batch sizes count sequences
    (or examples); ``global_batch_size = micro_batch_size x accumulation x world size``."""

    run_name: str = "run"
    """Folder name under ``output_dir``; ``--resume auto`` looks for checkpoints there."""
    output_dir: str = "checkpoints/runs"
    seed: int = 0

    # -- length and batch
    max_steps: int = 1000
    """Optimizer steps to train for."""
    global_batch_size: int = 8
    micro_batch_size: int = 8
    """Sequences per forward/backward on one device."""

    # -- optimizer (AdamW; no weight decay on norms, biases and embeddings)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """The schedule decays to ``lr * min_lr_ratio`` (GPT-3: 10 %)."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""

    # -- schedule
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    decay_steps: Optional[int] = None
    """Steps over which the LR decays (after warm-up ends it stays at the minimum); default: max_steps."""

    # -- execution
    precision: Precision = "auto"
    """``auto``: bf16 on a GPU that supports it, fp32 on CPU."""
    activation_checkpointing: bool = False
    compile: bool = False
    """Wrap the model in ``torch.compile``."""
    distributed: Engine = "none"
    """Distributed engine when launched with torchrun: ddp, fsdp2, zero2, zero3, zero3_offload.
    ``none`` keeps whatever ``accelerate launch --config_file`` set up (or plain DDP)."""

    # -- evaluation and logging
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end)."""
    eval_steps: int = 20
    """Batches per evaluation (the eval set is cut there when it is longer)."""
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    peak_flops: Optional[float] = None
    """Peak FLOP/s of one device for MFU; default: known GPU figures, measured once on CPU."""

    # -- checkpoints
    save_every_steps: int = 0
    save_every_minutes: float = 0.0
    keep_last: int = 2
    max_bad_steps: int = 5
    """A NaN/inf loss skips its step; this many in a row stop the run."""
    num_workers: int = 0
    """DataLoader workers for map-style datasets (streamed datasets always use 0 so that their
    position can be checkpointed exactly)."""

    def validate(self, world_size: int = 1) -> int:
        """Check the values that types cannot; return the gradient accumulation steps."""
        positive = ("max_steps", "global_batch_size", "micro_batch_size", "eval_steps", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UsageError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UsageError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UsageError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.keep_last < 1 or self.grad_clip < 0:
            raise UsageError("train.warmup_steps and train.grad_clip must be >= 0 and train.keep_last >= 1")
        return gradient_accumulation_steps(self.global_batch_size, self.micro_batch_size, world_size)


def gradient_accumulation_steps(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """``global = micro x accumulation x world size``; the accumulation steps, or a clear error."""
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        lower = max(per_step, global_batch_size // per_step * per_step)
        raise UsageError(
            f"train.global_batch_size={global_batch_size} is not a multiple of train.micro_batch_size="
            f"{micro_batch_size} x world size {world_size} = {per_step}; set global_batch_size to "
            f"{lower} or {lower + per_step}, or change micro_batch_size"
        )
    return global_batch_size // per_step


# ----------------------------------------------------------------------------- config files


def resolve_config_path(name: str | os.PathLike, family: Optional[str] = None) -> Path:
    """An existing path as given, else ``recipes/configs/<family>/<name>[.yaml]``."""
    path = Path(name)
    if path.is_file():
        return path
    candidates = []
    if family is not None and not path.is_absolute():
        base = CONFIGS_DIR / family
        candidates = [base / path, base / f"{path}.yaml"] if path.suffix == "" else [base / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    available = sorted(p.stem for p in (CONFIGS_DIR / family).glob("*.yaml")) if family else []
    where = f" or in {CONFIGS_DIR / family}" if family else ""
    hint = f"; available: {', '.join(available)}" if available else ""
    raise UsageError(f"config '{name}' not found as a file{where}{hint}")


def _resolve_config_args(argv: list[str], family: Optional[str]) -> list[str]:
    out = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += [arg, str(resolve_config_path(argv[i + 1], family))]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + str(resolve_config_path(arg.split("=", 1)[1], family))
        elif arg.startswith("--") and len(arg) > 2:  # --dry-run and --dry_run both work
            key, eq, value = arg[2:].partition("=")
            arg = "--" + key.replace("-", "_") + eq + value
        out.append(arg)
        i += 1
    return out


# ----------------------------------------------------------------------------- parsing


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += _valid_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def closest_key(key: str, valid: Sequence[str]) -> Optional[str]:
    """The valid key most like ``key`` (prefers keys in the same section)."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.5)
    return by_leaf[match[0]] if match else None


def unknown_key_error(key: str, valid: Sequence[str], where: str = "") -> UsageError:
    guess = closest_key(key, valid)
    hint = f"; did you mean '{guess}'?" if guess else f"; valid keys: {', '.join(valid)}"
    return UsageError(f"unknown config key '{key}'{where}{hint}")


_UNKNOWN_PATTERNS = (
    re.compile(r"unrecognized arguments: --?([\w.\-]+)"),
    re.compile(r"Group '([\w.]+)' does not accept (?:nested key|option) '([\w.\-]+)'"),
    re.compile(r"[Kk]ey ['\"]([\w.\-]+)['\"] is not expected"),
    re.compile(r"No action for (?:destination )?key ['\"]([\w.\-]+)['\"]"),
)


def _translate(message: str, valid: Sequence[str]) -> UsageError:
    for pattern in _UNKNOWN_PATTERNS:
        m = pattern.search(message)
        if m:
            key = ".".join(g for g in m.groups() if g).replace("-", "_")
            return unknown_key_error(key, valid)
    m = re.search(r'Parser key "([\w.]+)":\s*(.*)', message, re.S)
    if m:
        detail = " ".join(m.group(2).split())
        detail = re.sub(r"<class '(\w+)'>", r"\1", detail)
        detail = re.sub(r"(?:a )?(?:typing\.)?Literal\[(.*?)\]", r"one of \1", detail)
        return UsageError(f"bad value for '{m.group(1)}': {detail}")
    return UsageError(" ".join(message.split()))


def build_parser(config_cls: type, *, prog: Optional[str] = None, description: Optional[str] = None):
    """A jsonargparse parser for ``config_cls`` with a ``--config`` YAML option."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog=prog, description=description or (config_cls.__doc__ or "").strip().split("\n")[0],
        exit_on_error=False, default_env=False, allow_abbrev=False,
    )
    parser.add_argument("--config", action="config", help="YAML recipe (bare names resolve in recipes/configs/<family>/)")
    parser.add_class_arguments(config_cls, nested_key=None, fail_untyped=True)
    return parser


def parse_config(
    config_cls: type[T],
    argv: Optional[Sequence[str]] = None,
    *,
    family: Optional[str] = None,
    prog: Optional[str] = None,
    description: Optional[str] = None,
) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``config_cls``.

    ``--config NAME`` loads a YAML file (bare names resolve in ``recipes/configs/<family>/``);
    later ``--section.key value`` flags override it. Bad input raises :class:`UsageError`.
    ``--help`` prints every field with its type and default.
    """
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = _resolve_config_args(argv, family)
    parser = build_parser(config_cls, prog=prog, description=description)
    valid = _valid_keys(config_cls)
    try:
        namespace = parser.parse_args(argv)
    except (argparse.ArgumentError, ValueError, TypeError) as exc:
        raise _translate(str(exc), valid) from None
    init = parser.instantiate(namespace) if hasattr(parser, "instantiate") else parser.instantiate_classes(namespace)
    kwargs = {f.name: getattr(init, f.name) for f in fields(config_cls)}  # type: ignore[arg-type]
    return config_cls(**kwargs)


def config_to_dict(cfg: Any) -> dict:
    """A dataclass config as plain nested dicts (for logging and a run's ``config.yaml``)."""
    from dataclasses import asdict

    return asdict(cfg)


def _plain(value: Any) -> Any:
    """Paths, tuples and other non-YAML scalars as plain YAML values (str, list)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def save_config_yaml(cfg: Any, path: str | os.PathLike) -> Path:
    """Write a resolved recipe config (a dataclass) as YAML at ``path``, atomically.

    The file holds every field, defaults and command-line overrides included, in the recipe's own
    schema, so ``--config <path>`` reproduces the run. Written under a temporary name in the same
    folder and renamed, so a reader never sees half a file.
    """
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(_plain(config_to_dict(cfg)), sort_keys=False, allow_unicode=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def apply_overrides(target: Any, overrides: dict[str, Any], section: str) -> None:
    """Set ``overrides`` on an object (e.g. a ``PretrainedConfig``), refusing unknown attributes."""
    valid = sorted(k for k in vars(target) if not k.startswith("_"))
    for key, value in overrides.items():
        if not hasattr(target, key):
            raise unknown_key_error(f"{section}.{key}", [f"{section}.{k}" for k in valid])
        setattr(target, key, value)
