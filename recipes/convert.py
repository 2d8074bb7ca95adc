#!/usr/bin/env python
"""Move checkpoints between the Hub, public formats, training checkpoints and ONNX.

    # a Hub model into the local store: checkpoints/openai-community/gpt2
    python recipes/convert.py download openai-community/gpt2

    # public <-> Turing (folder to folder), with a parity report (max logit difference)
    python recipes/convert.py to-turing checkpoints/openai-community/gpt2 checkpoints/turing/gpt2-nlg
    python recipes/convert.py from-turing checkpoints/turing/gpt2-nlg exported/gpt2
    python recipes/convert.py to-turing checkpoints/google-bert/bert-base-uncased checkpoints/turing/bert-nlu

    # a (sharded) training checkpoint -> one save_pretrained folder
    python recipes/convert.py consolidate checkpoints/runs/nlg-tiny exported/nlg-tiny

    # upload with a generated model card (architecture, parameters, data, tokens, metrics, config)
    python recipes/convert.py push checkpoints/runs/nlg-tiny/final my-org/turing-nlg-tiny
    python recipes/convert.py push checkpoints/runs/nlg-tiny/final my-org/turing-nlg-tiny --dry-run

    # ONNX (TuringNLG with its KV cache; TuringNLU with its head), checked with ONNX Runtime
    python recipes/convert.py onnx checkpoints/runs/nlg-tiny/final exported/nlg-tiny-onnx

GPT-2 converts to TuringNLG; BERT, RoBERTa and XLM-R convert to TuringNLU (the head is read from
the checkpoint's ``architectures``). Bad input ends with one line ``error: ...`` and exit status 2;
a conversion whose outputs do not match the source within ``--tolerance`` writes nothing and
exits 1.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from turing_models.convert.onnx import OnnxMismatchError
from turing_models.errors import UsageError, cli_main
from turing_models.training.config import parse_command, positional

PUBLIC_NLU_TYPES = ("bert", "roberta", "xlm-roberta")
# our head class -> the transformers Auto class that loads the same head in the public format
AUTO_FOR = {
    "TuringNLGForCausalLM": "AutoModelForCausalLM",
    "TuringNLUModel": "AutoModel",
    "TuringNLUForMaskedLM": "AutoModelForMaskedLM",
    "TuringNLUForSequenceClassification": "AutoModelForSequenceClassification",
    "TuringNLUForQuestionAnswering": "AutoModelForQuestionAnswering",
    "TuringNLUForTokenClassification": "AutoModelForTokenClassification",
}
NLU_HEADS = {  # substring of a public ``architectures`` entry -> our class name
    "MaskedLM": "TuringNLUForMaskedLM",
    "PreTraining": "TuringNLUForMaskedLM",
    "SequenceClassification": "TuringNLUForSequenceClassification",
    "QuestionAnswering": "TuringNLUForQuestionAnswering",
    "TokenClassification": "TuringNLUForTokenClassification",
}


class ParityError(RuntimeError):
    """The converted model's outputs differ from the source's (exit status 1, nothing written)."""


# --------------------------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------------------------- #
def _read_config(source: str) -> dict[str, Any]:
    from turing_models.layers.state_dict_adapter import read_checkpoint_config

    return read_checkpoint_config(source)


def _resolve_source(source: str) -> str:
    from turing_models.zoo import resolve

    return resolve(source)


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"output {out} already exists; choose another folder or pass --overwrite.")


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def _tokenizer(source: str):
    """The source's tokenizer, or None when it has none."""
    from transformers import AutoTokenizer

    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model")
    if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in tokenizer_files):
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        return None


def fixed_input(config, batch: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    """The parity input: ``batch x seq`` token ids drawn with seed 0 (no padding, no special ids)."""
    vocab = getattr(config, "real_vocab_size", None) or config.vocab_size
    limit = getattr(config, "max_sequence_length", None) or config.max_position_embeddings
    low = min(5, vocab - 1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(low, vocab, (batch, min(seq, limit)), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _outputs(out) -> dict[str, torch.Tensor]:
    names = ("logits", "start_logits", "end_logits", "last_hidden_state")
    found = {n: getattr(out, n) for n in names if getattr(out, n, None) is not None}
    if "logits" in found or "start_logits" in found:
        found.pop("last_hidden_state", None)
    return found


@torch.no_grad()
def parity(ours, theirs, config) -> dict[str, Any]:
    """Max |difference| of every output of two models on :func:`fixed_input`."""
    ours.eval()
    theirs.eval()
    feeds = fixed_input(config)
    a, b = _outputs(ours(**feeds)), _outputs(theirs(**feeds))
    if set(a) != set(b):
        raise ParityError(f"the models return different outputs: {sorted(a)} vs {sorted(b)}.")
    report: dict[str, Any] = {"input": f"{tuple(feeds['input_ids'].shape)} token ids, seed 0", "outputs": {}}
    for name in a:
        x, y = a[name].float(), b[name].float()
        if x.shape != y.shape:
            raise ParityError(f"output {name} has shape {tuple(x.shape)} vs {tuple(y.shape)}.")
        report["outputs"][name] = float((x - y).abs().max())
    report["max_abs_diff"] = max(report["outputs"].values())
    report["scale"] = max(float(v.float().abs().max()) for v in b.values())
    return report


def _print_parity(report: dict[str, Any], what: str, tolerance: float) -> None:
    details = ", ".join(f"{k} {v:.3g}" for k, v in report["outputs"].items())
    status = "OK" if report["max_abs_diff"] <= tolerance else "FAILED"
    print(f"parity {what}: max |difference| {report['max_abs_diff']:.3g} ({details}; outputs up to "
          f"{report['scale']:.3g}) on a fixed input of {report['input']}: {status} (tolerance {tolerance:g})")
    if status != "OK":
        raise ParityError(f"parity check failed: max difference {report['max_abs_diff']:.3g} > {tolerance:g}; "
                          "nothing was written.")


def _nlu_head(arch: str) -> str:
    return next((ours for key, ours in NLU_HEADS.items() if key in arch), "TuringNLUModel")


def _auto(class_name: str):
    import transformers

    return getattr(transformers, AUTO_FOR[class_name])


# --------------------------------------------------------------------------------------------- #
# subcommands
# --------------------------------------------------------------------------------------------- #
def cmd_download(args) -> dict[str, Any]:
    from turing_models import hub

    dest = hub.local_path(hub.check_repo_id(args.repo_id), args.dir)
    partial = dest.with_name(f".{dest.name}.partial")
    new_dirs = [p for p in (partial, *partial.parents) if not p.exists()]
    try:
        path = hub.download(args.repo_id, args.dir, revision=args.revision)
    except BaseException:
        for folder in new_dirs:  # a failed download (offline, no such model) leaves no empty folders
            if folder.is_dir() and not any(p for p in folder.iterdir() if p.name != ".cache"):
                shutil.rmtree(folder, ignore_errors=True)
        raise
    files = sorted(p.name for p in path.iterdir())
    print(f"downloaded {args.repo_id} -> {path} ({len(files)} files: {', '.join(files[:8])}"
          f"{', ...' if len(files) > 8 else ''})")
    return {"path": str(path), "files": files}


def cmd_to_turing(args) -> dict[str, Any]:
    import turing_models.nlg  # noqa: F401  (registers the Auto classes)
    from turing_models import nlg, nlu

    source = _resolve_source(args.source)
    raw = _read_config(source)
    model_type = raw.get("model_type")
    arch = (raw.get("architectures") or [""])[0]
    if model_type == "gpt2":
        cls = nlg.TuringNLGForCausalLM
    elif model_type in PUBLIC_NLU_TYPES:
        cls = getattr(nlu, _nlu_head(arch) if args.head == "auto" else args.head)
    elif model_type in ("turing_nlg", "turing_nlu"):
        raise UsageError(f"{args.source} is already a Turing checkpoint ({model_type}); nothing to convert.")
    else:
        raise UsageError(f"{args.source} is a {model_type!r} checkpoint; to-turing converts gpt2 (-> TuringNLG) "
                         f"and {', '.join(PUBLIC_NLU_TYPES)} (-> TuringNLU).")
    out = Path(args.output)
    _check_output(out, args.overwrite)
    model = cls.from_pretrained(source)
    tmp = _staging(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = _tokenizer(source)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        converted = cls.from_pretrained(str(tmp))  # check what was written, not what is in memory
        original = _auto(cls.__name__).from_pretrained(source)
        report = parity(converted, original, converted.config)
        _print_parity(report, f"{type(original).__name__} -> {cls.__name__}", args.tolerance)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {cls.__name__} -> {out}" + ("" if tokenizer is not None else " (no tokenizer found in the source)"))
    return {"output": str(out), "class": cls.__name__, "parity": report}


def cmd_from_turing(args) -> dict[str, Any]:
    from turing_models.convert.onnx import load_turing_model

    source = _resolve_source(args.source)
    raw = _read_config(source)
    if raw.get("model_type") not in ("turing_nlg", "turing_nlu"):
        raise UsageError(f"{args.source} is a {raw.get('model_type')!r} checkpoint, not a TuringNLG / TuringNLU one; "
                         "from-turing exports Turing folders to GPT-2 / BERT / RoBERTa / XLM-R.")
    out = Path(args.output)
    _check_output(out, args.overwrite)
    model = load_turing_model(source).eval()
    tokenizer = _tokenizer(source)
    tmp = _staging(out)
    try:
        if raw["model_type"] == "turing_nlg":
            if args.model_type not in (None, "gpt2"):
                raise UsageError(f"TuringNLG exports to gpt2, not {args.model_type}.")
            from turing_models.nlg.adapter_gpt2 import export_gpt2

            export_gpt2(model, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
        else:
            if args.model_type == "gpt2":
                raise UsageError("TuringNLU exports to bert, roberta or xlm-roberta, not gpt2.")
            from turing_models.nlu.adapter_bert import export_to_hf

            export_to_hf(model, tmp / "model", args.model_type, tokenizer=tokenizer)
            for item in (tmp / "model").iterdir():
                os.replace(item, tmp / item.name)
            (tmp / "model").rmdir()
        exported = _auto(type(model).__name__).from_pretrained(str(tmp))
        report = parity(model, exported, model.config)
        _print_parity(report, f"{type(model).__name__} -> {type(exported).__name__}", args.tolerance)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {type(exported).__name__} ({exported.config.model_type}) -> {out}")
    return {"output": str(out), "class": type(exported).__name__, "parity": report}


def cmd_consolidate(args) -> dict[str, Any]:
    from turing_models.convert.consolidate import consolidate

    out = Path(args.output)
    _check_output(out, args.overwrite)
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    result = consolidate(args.checkpoint, out, config=args.config, tokenizer=args.tokenizer, dtype=dtype)
    print(f"consolidated {result['format']} checkpoint {result['checkpoint']} -> {out} "
          f"({result['architecture']}, {result['parameters']:,} parameters, {result['tensors']} tensors)")
    return result


def cmd_push(args) -> dict[str, Any]:
    from turing_models import hub

    model_dir = Path(args.model_dir)
    if args.dry_run:
        hub.check_repo_id(args.repo_id)
        card = hub.model_card(model_dir, repo_id=args.repo_id, run_dir=args.run, config_file=args.config,
                              license=args.license, datasets=args.dataset)
        ops = hub.upload_operations(model_dir, card)
        files = [op.path_in_repo for op in ops]
        print(card)
        print(f"dry run: would upload {len(files)} files to {args.repo_id}: {', '.join(files)}")
        return {"repo_id": args.repo_id, "files": files, "card": card, "commit": None}
    result = hub.push(model_dir, args.repo_id, run_dir=args.run, config_file=args.config, private=args.private,
                      revision=args.revision, license=args.license, datasets=args.dataset)
    print(f"pushed {len(result['files'])} files to https://huggingface.co/{args.repo_id}")
    return result


def cmd_onnx(args) -> dict[str, Any]:
    from turing_models.convert.onnx import export_onnx

    source = _resolve_source(args.source)
    out = Path(args.output)
    _check_output(out, args.overwrite)
    report = export_onnx(source, out, opset=args.opset, verify=not args.no_verify, atol=args.tolerance)
    check = (f"; ONNX Runtime vs PyTorch max |difference| {report['max_abs_diff']:.3g} (tolerance {args.tolerance:g})"
             if "max_abs_diff" in report else "")
    print(f"exported {report['kind']} -> {report['path']} ({report['size_mb']:.1f} MB){check}")
    return report


# --------------------------------------------------------------------------------------------- #
# the command line: one dataclass per subcommand
# --------------------------------------------------------------------------------------------- #
NLUHead = Literal["auto", "TuringNLUModel", "TuringNLUForMaskedLM", "TuringNLUForSequenceClassification",
                  "TuringNLUForQuestionAnswering", "TuringNLUForTokenClassification"]


@dataclass
class Download:
    """Snapshot a Hub model into checkpoints/<org>/<name>."""

    repo_id: str = field(default="", metadata=positional("e.g. openai-community/gpt2"))
    dir: Optional[str] = None
    """Target folder (default: checkpoints/<org>/<name>)."""
    revision: Optional[str] = None
    """Branch, tag or commit."""


@dataclass
class _Conversion:
    source: str = field(default="", metadata=positional("a model folder (or a Hub id in the local cache / store)"))
    output: str = field(default="", metadata=positional("the folder to write"))
    tolerance: float = 1e-3
    """Max allowed logit difference (fp32)."""
    overwrite: bool = False
    """Replace an existing output folder."""


@dataclass
class ToTuring(_Conversion):
    """GPT-2 -> TuringNLG, BERT / RoBERTa / XLM-R -> TuringNLU."""

    head: NLUHead = "auto"
    """TuringNLU class for BERT-family sources (default: from architectures)."""


@dataclass
class FromTuring(_Conversion):
    """TuringNLG -> GPT-2, TuringNLU -> BERT / RoBERTa / XLM-R."""

    model_type: Optional[Literal["gpt2", "bert", "roberta", "xlm-roberta"]] = None
    """Target format (default: the format the model came from)."""


@dataclass
class Consolidate:
    """Sharded training checkpoint (ZeRO / FSDP2) -> save_pretrained folder."""

    checkpoint: str = field(default="", metadata=positional("a run folder (newest checkpoint) or a step-* folder"))
    output: str = field(default="", metadata=positional("the folder to write"))
    config: Optional[str] = None
    """Model config.json or folder (default: the run's final/)."""
    tokenizer: Optional[str] = None
    """Tokenizer folder or built-in name to save alongside."""
    dtype: Literal["keep", "float32", "bfloat16", "float16"] = "keep"
    overwrite: bool = False
    """Replace an existing output folder."""


@dataclass
class Push:
    """Upload a model folder with a generated model card."""

    model_dir: str = field(default="", metadata=positional("a save_pretrained folder, e.g. checkpoints/runs/<run>/final"))
    repo_id: str = field(default="", metadata=positional("<namespace>/<name> on the Hub"))
    run: Optional[str] = None
    """The run folder with metrics.jsonl (default: the model's parent)."""
    config: Optional[str] = None
    """The recipe YAML (default: the run's config.yaml)."""
    license: str = "mit"
    dataset: list[str] = field(default_factory=list)
    """Hub dataset ids for the card."""
    private: bool = False
    revision: Optional[str] = None
    """Branch to push to."""
    dry_run: bool = False
    """Print the card and the file list; upload nothing."""


@dataclass
class Onnx:
    """Export to ONNX and check it with ONNX Runtime."""

    source: str = field(default="", metadata=positional("a TuringNLG / TuringNLU folder"))
    output: str = field(default="", metadata=positional("the folder to write (model.onnx, config.json, onnx.json, tokenizer)"))
    opset: int = 17
    tolerance: float = 1e-4
    """Max allowed ONNX Runtime vs PyTorch difference."""
    no_verify: bool = False
    """Skip the ONNX Runtime check."""
    overwrite: bool = False
    """Replace an existing output folder."""


COMMANDS = {
    "download": (Download, cmd_download),
    "to-turing": (ToTuring, cmd_to_turing),
    "from-turing": (FromTuring, cmd_from_turing),
    "consolidate": (Consolidate, cmd_consolidate),
    "push": (Push, cmd_push),
    "onnx": (Onnx, cmd_onnx),
}


@cli_main
def _run(argv: Optional[list[str]]) -> dict[str, Any]:
    name, args = parse_command({k: cls for k, (cls, _) in COMMANDS.items()}, argv, prog="convert.py",
                               description=__doc__)
    return COMMANDS[name][1](args)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run one subcommand; usage errors exit 2 with one line, a failed parity check exits 1."""
    try:
        return _run(argv)
    except (ParityError, OnnxMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
