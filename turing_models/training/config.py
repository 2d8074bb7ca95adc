"""Recipes are data: typed config dataclasses loaded from YAML + command-line overrides.

A recipe describes its settings as nested dataclasses; :func:`parse_config` builds a
`jsonargparse <https://jsonargparse.readthedocs.io>`_ parser from them, so every field can be set
in a YAML file (``--config tiny.yaml``) and overridden on the command line (``--train.lr 3e-4``),
with types checked and unknown keys refused. This module only adds what jsonargparse cannot know:

* **bare config names** resolve inside the recipes' ``configs/<family>/``: ``--config 17b.yaml``
  (or ``--config 17b``) finds ``configs/nlg/17b.yaml`` for ``pretrain_nlg.py``. The configs ship
  inside the wheel (:func:`recipes_dir`), so named recipes and ``Trainer(distributed="zero3")``
  work from any folder;
* **one command shape**: every boolean is a bare flag (``--dry-run``), every option also takes
  dashes, and :func:`parse_command` gives subcommands (``prepare_data.py tokenize ...``);
* **errors for people**: an unknown key names the closest valid one, a broken or non-mapping
  YAML names the file; all are raised as :class:`~turing_models.errors.UsageError` (one line,
  exit 2 under :func:`~turing_models.errors.cli_main`);
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
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, TypeVar

from ..errors import UsageError

T = TypeVar("T")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "linear", "constant"]
Engine = Literal["none", "ddp", "fsdp2", "zero2", "zero3", "zero3_offload"]


@dataclass
class ParallelConfig:
    """Tensor parallelism and 2-D / 3-D meshes (:mod:`turing_models.training.parallel`):
    ``dp_replicate x dp_shard x tp`` processes. Used when ``tp`` or ``dp_replicate`` is above 1
    (then ``train.distributed`` stays ``none``: FSDP2 over ``dp_shard`` is applied with the mesh)."""

    tp: int = 1
    """Tensor-parallel ranks (within a node); must divide the head count and the FFN width."""
    dp_shard: int = -1
    """FSDP2 ranks sharding parameters, gradients and optimizer state; -1: the processes left over."""
    dp_replicate: int = 1
    """Replicas of the sharded model (HSDP, across nodes)."""
    sequence_parallel: bool = False
    """With ``tp`` > 1: the residual stream, norms and dropouts sharded on the sequence between the
    tensor-parallel matmuls (reduce-scatter / all-gather in place of all-reduce); activation
    memory outside attention and the FFN divided by ``tp``."""
    loss_parallel: bool = False
    """With ``tp`` > 1: the LM head's logits stay split on the vocabulary and the cross-entropy is
    computed on the shards (no ``tokens x vocab`` gather)."""

    @property
    def active(self) -> bool:
        return self.tp > 1 or self.dp_replicate > 1


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
    """Evaluate every N steps; 0 means never during training (only at the end)."""
    eval_steps: int = 20
    """Batches per evaluation (the eval set is cut there when it is longer)."""
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    peak_flops: Optional[float] = None
    """Peak FLOP/s of one device for MFU; default: known GPU figures, measured once on CPU."""

    # -- checkpoints
    save_every_steps: int = 0
    """Checkpoint every N steps; 0 means never by step count."""
    save_every_minutes: float = 0.0
    """Checkpoint every N minutes of training; 0 means never by time."""
    keep_last: int = 2
    max_bad_steps: int = 5
    """A NaN/inf loss skips its step; this many in a row stop the run."""
    num_workers: int = 0
    """DataLoader workers for map-style datasets (streamed datasets always use 0 so that their
    position can be checkpointed exactly)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor / 2-D parallelism: ``--train.parallel.tp``, ``.dp_shard``, ``.dp_replicate``."""

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
        for name in ("eval_every", "save_every_steps", "save_every_minutes", "warmup_steps", "grad_clip",
                     "num_workers"):
            if getattr(self, name) < 0:
                never = " (0 means never)" if name in ("eval_every", "save_every_steps", "save_every_minutes") else ""
                raise UsageError(f"train.{name} must be >= 0{never}, got {getattr(self, name)}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise UsageError(f"train.peak_flops must be positive (FLOP/s of one device) or null, got {self.peak_flops}")
        if self.keep_last < 1 or self.max_bad_steps < 1:
            raise UsageError(f"train.keep_last and train.max_bad_steps must be >= 1, got {self.keep_last} "
                             f"and {self.max_bad_steps}")
        if (self.parallel.sequence_parallel or self.parallel.loss_parallel) and self.parallel.tp <= 1:
            raise UsageError("train.parallel.sequence_parallel and train.parallel.loss_parallel split work over the "
                             "tensor-parallel ranks; set train.parallel.tp above 1 or turn them off.")
        if self.parallel.active:  # the ranks of one tensor-parallel group share their batch
            from .parallel import ParallelDims

            if self.distributed != "none":
                raise UsageError(f"train.parallel (tp {self.parallel.tp}, dp_replicate {self.parallel.dp_replicate}) "
                                 f"applies FSDP2 over its own mesh; set train.distributed to none (now "
                                 f"{self.distributed}).")
            dims = ParallelDims.from_config(self.parallel, world_size)
            dims.validate(world_size)
            world_size = dims.dp_size
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


# ----------------------------------------------------------------------------- where recipes live


def recipes_dir() -> Path:
    """The recipes folder: ``turing_models/recipes`` in an installed wheel (the recipes, their
    configs and bundled data ship as package data), ``recipes/`` beside the package in a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "recipes", package.parent / "recipes"):
        if (candidate / "configs").is_dir():
            return candidate
    return package / "recipes"


#: The recipe configs (``<family>/<name>.yaml``) and the engine configs (``distributed/``).
CONFIGS_DIR = recipes_dir() / "configs"


def distributed_config_path(name: str) -> Path:
    """A file of ``configs/distributed/`` (DeepSpeed JSON, Accelerate YAML), installed or not."""
    path = CONFIGS_DIR / "distributed" / name
    if not path.is_file():
        available = ", ".join(sorted(p.name for p in (CONFIGS_DIR / "distributed").glob("*")))
        raise UsageError(f"no engine config '{name}' in {CONFIGS_DIR / 'distributed'}; available: {available}")
    return path


def resolve_recipe_path(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists or is absolute; a missing relative ``recipes/...`` path
    (the recipes' bundled defaults, e.g. ``recipes/data/tinyshakespeare.txt``) resolves in
    :func:`recipes_dir`, so the defaults work from any folder and from a wheel."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] != "recipes":
        return p
    alt = recipes_dir().joinpath(*p.parts[1:])
    return alt if alt.exists() else p


# ----------------------------------------------------------------------------- config files


def resolve_config_path(name: str | os.PathLike, family: Optional[str] = None) -> Path:
    """An existing path as given, else ``configs/<family>/<name>[.yaml]`` of :func:`recipes_dir`."""
    path = Path(name)
    if path.is_file():
        return path
    if family is not None and not path.is_absolute():
        base = CONFIGS_DIR / family
        candidates = [base / path, base / f"{path}.yaml"] if path.suffix == "" else [base / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    available = sorted(p.stem for p in (CONFIGS_DIR / family).glob("*.yaml")) if family else []
    where = f" or in {CONFIGS_DIR / family}" if family else ""
    hint = f"; available: {', '.join(available)}" if available else "; give the path of a YAML file"
    raise UsageError(f"config '{name}' not found as a file{where}{hint}")


def read_config_file(path: str | os.PathLike) -> dict:
    """A YAML config file as a mapping; a broken or non-mapping file is a :class:`UsageError`
    that names the file and says how to fix it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config {path} is not a text file; give a UTF-8 YAML file") from None
    except OSError as exc:
        raise UsageError(f"cannot read config {path} ({exc.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UsageError(f"config {path} is not valid YAML ({problem}{where}); fix the syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"config {path} holds a {type(data).__name__}, not a mapping of settings; write one "
            f"'section:' per line with indented 'key: value' lines under it (e.g. 'train:' then '  lr: 3.0e-4')")
    return data


def _check_config_keys(data: dict, valid: Sequence[str], path: Path, prefix: str = "") -> None:
    """Refuse keys of a config file that the recipe does not have, naming the closest one."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in valid:
            continue
        if (value is None or isinstance(value, dict)) and any(v.startswith(f"{full}.") for v in valid):
            _check_config_keys(value or {}, valid, path, f"{full}.")  # an empty section is no settings
            continue
        raise unknown_key_error(full, valid, where=f" in {path}")


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


def positional(help: str = "", *, optional: bool = False) -> dict:
    """``field(metadata=positional("..."))`` makes a command's field a positional argument
    (``optional=True``: it may be left out and keeps its default)."""
    return {"positional": "?" if optional else True, "help": help}


def alias(*names: str) -> dict:
    """``field(metadata=alias("-i"))``: more spellings of a field's option."""
    return {"aliases": names}


def _configure(parser, aliases: dict[str, Sequence[str]]) -> None:
    """Every boolean works as a bare flag (``--dry-run`` = ``--dry-run true``), a list takes its
    items as separate words (``--input a.txt b.txt``), every option is also spelled with dashes
    (``--dry-run`` and ``--dry_run``), and fields may have short aliases (``-i``)."""
    import typing

    for action in list(parser._actions):
        hint = getattr(action, "_typehint", None)
        if action.option_strings and hint in (bool, Optional[bool]):
            action.nargs, action.const = "?", True
        elif action.option_strings and typing.get_origin(hint) in (list, typing.List):
            action.nargs, action._typehint = "+", (typing.get_args(hint) or (str,))[0]  # checked per item
            action.metavar = action.dest.rsplit(".", 1)[-1].upper()
        new = list(aliases.get(action.dest, ()))
        for option in action.option_strings:
            dashed = option[:2] + option[2:].replace("_", "-")
            if option.startswith("--") and dashed != option:
                new.append(dashed)
        for option in new:
            if option not in parser._option_string_actions:
                action.option_strings.append(option)
                parser._option_string_actions[option] = action


def _config_action(family: Optional[str], valid: Sequence[str]):
    """The ``--config`` action: bare names resolve per family, and the file is checked (a YAML
    mapping, known keys) before jsonargparse reads it."""
    from jsonargparse import ActionConfigFile

    class RecipeConfigFile(ActionConfigFile):
        def __call__(self, parser, cfg, values, option_string=None):
            path = resolve_config_path(values, family)
            data = read_config_file(path)
            _check_config_keys(data, valid, path)
            if data:  # an empty file (or only comments) sets nothing
                super().__call__(parser, cfg, str(path), option_string)

    return RecipeConfigFile


def _parser(**kwargs):
    """A jsonargparse ``ArgumentParser`` that raises instead of exiting and keeps the line breaks
    of its description (the recipes' docstrings hold examples)."""
    import argparse

    from jsonargparse import ArgumentParser, DefaultHelpFormatter

    class Formatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        pass

    return ArgumentParser(exit_on_error=False, default_env=False, allow_abbrev=False, formatter_class=Formatter,
                          **kwargs)


def build_parser(config_cls: type, *, prog: Optional[str] = None, description: Optional[str] = None,
                 family: Optional[str] = None):
    """A jsonargparse parser for the dataclass ``config_cls``: one option per field (nested
    dataclasses as ``--section.key``), a ``--config`` YAML option, bare boolean flags, and fields
    marked with :func:`positional` as positional arguments."""
    parser = _parser(prog=prog, description=description or (config_cls.__doc__ or "").strip().split("\n")[0])
    if "config" not in {f.name for f in fields(config_cls)}:  # a command may have a --config of its own
        where = f"configs/{family}/ of the recipes" if family else "the working folder"
        parser.add_argument("--config", action=_config_action(family, _valid_keys(config_cls)),
                            help=f"a YAML file of settings (bare names resolve in {where}); later flags override it")
    skip = set()
    for f in fields(config_cls):
        kind = f.metadata.get("positional")
        if kind:
            skip.add(f.name)
            extra = {"nargs": "?", "default": f.default} if kind == "?" else {}
            parser.add_argument(f.name, type=str, help=f.metadata.get("help", ""), **extra)
    parser.add_class_arguments(config_cls, nested_key=None, fail_untyped=True, skip=skip or None)
    _configure(parser, {f.name: f.metadata["aliases"] for f in fields(config_cls) if "aliases" in f.metadata})
    return parser


def _check_options(parser, argv: Sequence[str], valid: Sequence[str]) -> None:
    """Name the closest valid key for an unknown ``--option`` (argparse only says 'unrecognized')."""
    known = parser._option_string_actions
    for token in argv:
        if token == "--":
            return
        if not token.startswith("--") or len(token) == 2:
            continue
        option = token.split("=", 1)[0]
        if option in known:
            continue
        base = option.rsplit(".", 1)[0]  # --section.key of a typed option that takes sub-keys
        if base in known and getattr(known[base], "_typehint", None) not in (None, bool):
            continue
        key = option[2:].replace("-", "_")
        raise unknown_key_error(key, valid)


def _build(cls: type, values: Any) -> Any:
    """The dataclass ``cls`` from a parsed namespace (nested sections included)."""
    kwargs = {}
    for f in fields(cls):
        value = values[f.name] if f.name in values else None
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default) and not is_dataclass(value):
            value = default if value is None else _build(type(default), value)  # an empty section: defaults
        kwargs[f.name] = value
    return cls(**kwargs)


def _parse(parser, argv: list[str]):
    import argparse

    try:
        return parser.parse_args(argv)
    except (argparse.ArgumentError, TypeError, ValueError) as exc:
        cause: Optional[BaseException] = exc
        while cause is not None and not isinstance(cause, UsageError):  # raised by our --config action
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        message = " ".join(str(exc).split())
        raise UsageError(f"{message}; see {parser.prog} --help") from None


def parse_config(
    config_cls: type[T],
    argv: Optional[Sequence[str]] = None,
    *,
    family: Optional[str] = None,
    prog: Optional[str] = None,
    description: Optional[str] = None,
) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``config_cls``.

    ``--config NAME`` loads a YAML file (bare names resolve in ``configs/<family>/``); later
    ``--section.key value`` flags override it. Bad input raises :class:`UsageError`. ``--help``
    prints every field with its type and default.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(config_cls, prog=prog, description=description, family=family)
    _check_options(parser, argv, _valid_keys(config_cls))
    return _build(config_cls, _parse(parser, argv))


def parse_command(
    commands: dict[str, type],
    argv: Optional[Sequence[str]] = None,
    *,
    prog: Optional[str] = None,
    description: Optional[str] = None,
) -> tuple[str, Any]:
    """Parse ``COMMAND [options]`` where each command is a dataclass (see :func:`positional`);
    returns ``(command, config)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(prog=prog, description=description)
    subcommands = parser.add_subcommands(required=True, dest="command")
    subparsers = {}
    for name, cls in commands.items():
        subparsers[name] = build_parser(cls, prog=f"{prog} {name}" if prog else name)
        subcommands.add_subcommand(name, subparsers[name], help=(cls.__doc__ or "").strip().split("\n")[0])
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None:
        if not any(a in ("-h", "--help") for a in argv):
            raise UsageError(f"no command given; choose one of {', '.join(commands)} (see {prog} --help)")
    elif argv[first] not in commands:
        guess = difflib.get_close_matches(argv[first], list(commands), n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        raise UsageError(f"unknown command '{argv[first]}'; choose one of {', '.join(commands)}{hint}")
    else:
        name = argv[first]
        _check_options(subparsers[name], argv[first + 1:], _valid_keys(commands[name]))
    namespace = _parse(parser, argv)
    name = namespace.command
    return name, _build(commands[name], namespace[name])


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
