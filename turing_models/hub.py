"""The Hugging Face Hub side of the zoo: downloads into the local store, model cards, uploads.

    from turing_models import hub

    hub.download("openai-community/gpt2")        # -> checkpoints/openai-community/gpt2
    card = hub.model_card("checkpoints/runs/nlg-tiny/final")   # README.md text for the Hub
    hub.push("checkpoints/runs/nlg-tiny/final", "my-org/turing-nlg-tiny")

The model card is generated from what a run leaves on disk (``checkpoints/runs/<run>/``): the
model folder's ``config.json`` and weight headers (architecture, parameter count), the run's
``metrics.jsonl`` (tokens seen, steps, the last training loss and evaluation metrics),
``metrics.json`` (a fine-tuning run's task metrics) and the exact recipe config (``config.yaml``).
:func:`push` uploads the folder with that card as ``README.md`` in one commit.
Every failure a user can fix (no network, a bad repo id, a folder that is not a model) is a
:class:`~turing_models.errors.UsageError` with one line saying what to do.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .errors import UsageError
from .io import read_config, read_json, safetensors_header

PathLike = Union[str, os.PathLike]

#: files ``download`` fetches by default: configs, tokenizers, safetensors weights, the model card
DEFAULT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.md", "*.tiktoken"]
#: fallback when a repository has no safetensors weights
BIN_PATTERNS = ["pytorch_model*.bin"]
RECIPE_CONFIG_FILES = ("config.yaml", "run_config.yaml")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

_PIPELINE_TAGS = {
    "ForCausalLM": "text-generation",
    "ForMaskedLM": "fill-mask",
    "ForPreTraining": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForQuestionAnswering": "question-answering",
    "ForTokenClassification": "token-classification",
}


# --------------------------------------------------------------------------------------------- #
# Download
# --------------------------------------------------------------------------------------------- #
def check_repo_id(repo_id: str) -> str:
    """``org/name`` or ``name``; anything else is a :class:`UsageError`."""
    repo_id = str(repo_id).strip()
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise UsageError(f"{repo_id!r} is not a Hub model id; write it as <org>/<name>, e.g. openai-community/gpt2.")
    return repo_id


def local_path(repo_id: str, root: Optional[PathLike] = None) -> Path:
    """Where ``repo_id`` lives in the local store: ``checkpoints/<org>/<name>`` (litgpt's layout)."""
    from .zoo import checkpoints_dir

    return Path(root) if root is not None else checkpoints_dir() / check_repo_id(repo_id)


def _hub_error(exc: BaseException, what: str) -> UsageError:
    """One line for the ways talking to the Hub fails."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return UsageError(f"{what}: the repository is gated; accept its terms on huggingface.co and log in "
                          "(hf auth login or HF_TOKEN).")
    if isinstance(exc, RepositoryNotFoundError):
        return UsageError(f"{what}: no such repository, or it is private (check the id; log in with hf auth login).")
    if isinstance(exc, RevisionNotFoundError):
        return UsageError(f"{what}: that revision does not exist; pass an existing branch, tag or commit.")
    if constants.HF_HUB_OFFLINE:
        return UsageError(f"{what}: offline mode is on (HF_HUB_OFFLINE=1); unset it on a machine with network, "
                          "or copy a downloaded folder into the checkpoint store.")
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return UsageError(f"{what}: the Hugging Face Hub is not reachable ({reason}); check the network, "
                      "or copy a downloaded folder into the checkpoint store.")


def _hub_exceptions() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    found: list[type[BaseException]] = [HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError]
    for client in ("httpx2", "httpx"):  # what huggingface_hub talks HTTP with, by version
        try:
            found.append(__import__(client).HTTPError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        found.append(requests.RequestException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def download(
    repo_id: str,
    local_dir: Optional[PathLike] = None,
    *,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    allow_patterns: Optional[list[str]] = None,
) -> Path:
    """Download a Hub model into the local store (``checkpoints/<org>/<name>``) and return its path.

    Only configs, tokenizer files and safetensors weights are fetched (``.bin`` weights when the
    repository has no safetensors). The files land in ``.<name>.partial`` first (an interrupted
    download resumes there) and the folder is renamed when complete, so the store never holds a
    half-downloaded model.
    """
    from huggingface_hub import snapshot_download

    repo_id = check_repo_id(repo_id)
    dest = local_path(repo_id, local_dir)
    partial = dest.with_name(f".{dest.name}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    what = f"cannot download {repo_id}"
    try:
        snapshot_download(repo_id, revision=revision, token=token, local_dir=str(partial),
                          allow_patterns=allow_patterns or DEFAULT_PATTERNS)
        if allow_patterns is None and not any(partial.glob("*.safetensors")):
            snapshot_download(repo_id, revision=revision, token=token, local_dir=str(partial),
                              allow_patterns=BIN_PATTERNS)
    except _hub_exceptions() as exc:
        raise _hub_error(exc, what) from None
    if not (partial / "config.json").is_file():
        raise UsageError(f"{what}: the repository has no config.json, so it is not a transformers model.")
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume bookkeeping
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(partial, dest)
    return dest


# --------------------------------------------------------------------------------------------- #
# What a run leaves on disk
# --------------------------------------------------------------------------------------------- #
@dataclass
class RunSummary:
    """The facts a model card reports about the run that produced a checkpoint."""

    run_dir: Optional[Path] = None
    steps: Optional[int] = None
    tokens_seen: Optional[int] = None
    train_loss: Optional[float] = None
    eval: dict[str, float] = field(default_factory=dict)
    task_metrics: dict[str, Any] = field(default_factory=dict)
    recipe_config: Optional[str] = None  # the YAML text, verbatim
    recipe_config_file: Optional[str] = None


def read_metrics(path: PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a corrupt line is a :class:`UsageError` naming it."""
    records = []
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number} is not a JSON line ({exc.msg}); fix or delete that line.") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{number} is not a JSON object; metrics.jsonl holds one object per line.")
            records.append(record)
    return records


def find_run_dir(model_dir: PathLike) -> Optional[Path]:
    """The run a model folder came from: itself or its parent (``runs/<run>/final``) when that
    holds a ``metrics.jsonl``."""
    model_dir = Path(model_dir)
    for candidate in (model_dir, model_dir.parent):
        if (candidate / "metrics.jsonl").is_file():
            return candidate
    return None


def summarize_run(run_dir: Optional[PathLike], config_file: Optional[PathLike] = None) -> RunSummary:
    """Steps, tokens seen, final losses and metrics, and the recipe config of a run folder."""
    summary = RunSummary(run_dir=Path(run_dir) if run_dir is not None else None)
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UsageError(f"run folder {run_dir} does not exist; pass the checkpoints/runs/<run> folder.")
        metrics_file = run_dir / "metrics.jsonl"
        if metrics_file.is_file():
            for record in read_metrics(metrics_file):
                step = record.get("step")
                if isinstance(step, int):
                    summary.steps = max(summary.steps or 0, step)
                if "tokens" in record:
                    summary.tokens_seen = int(record["tokens"])
                if "loss" in record and _finite(record["loss"]):
                    summary.train_loss = float(record["loss"])
                evals = {k: float(v) for k, v in record.items() if k.startswith("eval_") and _finite(v)}
                if evals:
                    summary.eval = evals
        task_file = run_dir / "metrics.json"
        if task_file.is_file():
            data = read_json(task_file, what="task metrics")
            summary.task_metrics = {k: v for k, v in data.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)}
        if config_file is None:
            config_file = next((run_dir / f for f in RECIPE_CONFIG_FILES if (run_dir / f).is_file()), None)
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise UsageError(f"recipe config {config_file} does not exist; pass the YAML file the run was trained with.")
        summary.recipe_config = config_file.read_text(encoding="utf-8")
        summary.recipe_config_file = str(config_file)
    return summary


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------- #
# Model card
# --------------------------------------------------------------------------------------------- #
def count_parameters(model_dir: PathLike) -> int:
    """Parameters stored in a folder's safetensors files, read from the headers (no weights loaded)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise UsageError(f"{model_dir} has no .safetensors weights; save it with save_pretrained first.")
    return sum(math.prod(meta["shape"]) for file in files for meta in safetensors_header(file).values())


def _human(n: Optional[float]) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _read_config(model_dir: Path) -> dict[str, Any]:
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"{model_dir} is not a model folder (no config.json); pass a save_pretrained folder, "
                         "e.g. checkpoints/runs/<run>/final.")
    return read_config(model_dir)


def _training_data(summary: RunSummary) -> Optional[str]:
    """The data section of the recipe config, in words."""
    if not summary.recipe_config:
        return None
    import yaml

    try:
        config = yaml.safe_load(summary.recipe_config) or {}
    except yaml.YAMLError:
        return None
    parts = []
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, dict):
        for key in ("corpus", "shards", "train_file", "path", "dataset", "eval_file", "tokenizer"):
            if data.get(key):
                parts.append(f"{key} `{data[key]}`")
    elif isinstance(data, str):
        parts.append(f"`{data}`")
    if isinstance(config, dict) and config.get("task"):
        parts.insert(0, f"task `{config['task']}`")
    return ", ".join(parts) or None


def model_card(
    model_dir: PathLike,
    *,
    repo_id: Optional[str] = None,
    run_dir: Optional[PathLike] = None,
    config_file: Optional[PathLike] = None,
    license: str = "mit",
    datasets: Iterable[str] = (),
    description: Optional[str] = None,
) -> str:
    """The ``README.md`` (YAML metadata + Markdown) for a model folder and the run behind it.

    ``run_dir`` defaults to the folder's run (``runs/<run>/final`` -> ``runs/<run>``);
    ``config_file`` to the run's ``config.yaml``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    if run_dir is None:
        run_dir = find_run_dir(model_dir)
    summary = summarize_run(run_dir, config_file)
    params = count_parameters(model_dir)
    arch = (config.get("architectures") or [config.get("model_type", "model")])[0]
    model_type = config.get("model_type", "unknown")
    pipeline_tag = next((tag for suffix, tag in _PIPELINE_TAGS.items() if arch.endswith(suffix)), None)
    name = repo_id or model_dir.resolve().name
    if name == "final" and summary.run_dir is not None:
        name = summary.run_dir.resolve().name

    metadata = ModelCardData(
        library_name="transformers", license=license, tags=["turing-models", model_type],
        pipeline_tag=pipeline_tag, datasets=list(datasets) or None,
    )
    hidden, layers = config.get("hidden_size"), config.get("num_hidden_layers")
    heads = config.get("num_attention_heads")
    context = config.get("max_position_embeddings")
    vocab = config.get("real_vocab_size") or config.get("vocab_size")
    rows = [
        ("architecture", f"`{arch}` (`model_type: {model_type}`)"),
        ("parameters", f"{_human(params)} ({params:,})"),
        ("layers / hidden / heads", f"{layers} / {hidden} / {heads}" + (f" (head dim {hidden // heads})"
                                                                         if hidden and heads else "")),
        ("context", f"{context} tokens" if context else "unknown"),
        ("vocabulary", f"{vocab:,} tokens" if vocab else "unknown"),
    ]
    if model_type == "turing_nlg":
        rows.append(("block", f"pre-LN GPT decoder, {config.get('hidden_act', config.get('activation', 'gelu'))} MLP, learned positions"))
    elif model_type == "turing_nlu":
        rows.append(("block", f"{config.get('norm_position', 'post')}-LN bidirectional encoder, "
                              f"{config.get('hidden_act', 'gelu')} MLP"))
    if config.get("id2label"):
        labels = ", ".join(str(v) for _, v in sorted(config["id2label"].items(), key=lambda kv: int(kv[0])))
        rows.append(("labels", labels))

    auto = {
        "text-generation": "AutoModelForCausalLM",
        "fill-mask": "AutoModelForMaskedLM",
        "text-classification": "AutoModelForSequenceClassification",
        "question-answering": "AutoModelForQuestionAnswering",
        "token-classification": "AutoModelForTokenClassification",
    }.get(pipeline_tag or "", "AutoModel")
    ref = repo_id or str(model_dir)
    lines = [f"# {name}", ""]
    family = {"turing_nlg": "TuringNLG decoder", "turing_nlu": "TuringNLU encoder"}.get(model_type, arch)
    lines += [description or f"A {family} trained with turing-models (Hugging Face native Turing-style "
              "language models).", ""]
    lines += ["## Model", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    lines += ["## Use", "", "```python", "import turing_models  # registers the Turing classes with transformers",
              f"from transformers import {auto}, AutoTokenizer", "",
              f"model = {auto}.from_pretrained({ref!r})", f"tokenizer = AutoTokenizer.from_pretrained({ref!r})",
              "```", ""]
    if pipeline_tag:
        lines += ["or with a pipeline:", "", "```python", "import turing_models",
                  "from transformers import pipeline", "",
                  f"pipe = pipeline({pipeline_tag!r}, model={ref!r})", "```", ""]

    lines += ["## Training", ""]
    data = _training_data(summary)
    facts = [
        ("training data", data or "not recorded"),
        ("optimizer steps", f"{summary.steps:,}" if summary.steps is not None else "not recorded"),
        ("tokens seen", f"{summary.tokens_seen:,} ({_human(summary.tokens_seen)})" if summary.tokens_seen is not None
         else "not recorded"),
    ]
    lines += [f"- {k}: {v}" for k, v in facts] + [""]
    metrics = []
    if summary.train_loss is not None:
        metrics.append(("final training loss", summary.train_loss))
    metrics += sorted(summary.eval.items())
    metrics += sorted((k, v) for k, v in summary.task_metrics.items() if k not in summary.eval)
    if metrics:
        lines += ["### Final metrics", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics] + [""]
    else:
        lines += ["No metrics were recorded for this checkpoint (no metrics.jsonl next to it).", ""]
    if summary.recipe_config:
        where = f" (`{Path(summary.recipe_config_file).name}`)" if summary.recipe_config_file else ""
        lines += [f"### Recipe config{where}", "", "The exact configuration of the run:", "",
                  "```yaml", summary.recipe_config.rstrip("\n"), "```", ""]
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


# --------------------------------------------------------------------------------------------- #
# Upload
# --------------------------------------------------------------------------------------------- #
def upload_operations(model_dir: PathLike, card: str) -> list:
    """The files one commit uploads: every file of the folder (hidden and temporary files
    skipped) plus ``README.md`` = ``card`` (replacing any README the folder has)."""
    from huggingface_hub import CommitOperationAdd

    model_dir = Path(model_dir)
    ops = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == "README.md" or ".tmp" in path.name:
            continue
        ops.append(CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=str(path)))
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    return ops


def push(
    model_dir: PathLike,
    repo_id: str,
    *,
    run_dir: Optional[PathLike] = None,
    config_file: Optional[PathLike] = None,
    private: bool = False,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    license: str = "mit",
    datasets: Iterable[str] = (),
    api: Any = None,
) -> dict[str, Any]:
    """Upload a model folder to the Hub with a generated model card, in one commit.

    ``api`` is a :class:`huggingface_hub.HfApi` (default: a new one with ``token``); the repository
    is created when missing. Returns ``{"repo_id", "files", "card", "commit"}``.
    """
    model_dir = Path(model_dir)
    repo_id = check_repo_id(repo_id)
    if "/" not in repo_id:
        raise UsageError(f"push needs <namespace>/<name>, got {repo_id!r}; e.g. my-org/turing-nlg-tiny.")
    card = model_card(model_dir, repo_id=repo_id, run_dir=run_dir, config_file=config_file, license=license,
                      datasets=datasets)
    ops = upload_operations(model_dir, card)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    what = f"cannot push to {repo_id}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo_id, operations=ops, revision=revision, repo_type="model",
                                   commit_message=commit_message or f"Upload {model_dir.name} with turing-models")
    except _hub_exceptions() as exc:
        raise _hub_error(exc, what) from None
    return {"repo_id": repo_id, "files": [op.path_in_repo for op in ops], "card": card, "commit": commit}


__all__ = [
    "RunSummary",
    "check_repo_id",
    "count_parameters",
    "download",
    "find_run_dir",
    "local_path",
    "model_card",
    "push",
    "read_metrics",
    "summarize_run",
    "upload_operations",
]
