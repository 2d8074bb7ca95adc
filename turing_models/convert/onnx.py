"""Export TuringNLG and TuringNLU models to ONNX, check them with ONNX Runtime, decode with the cache.

    from turing_models.convert.onnx import export_onnx, OnnxCausalLM

    export_onnx(model, "exported/nlg-onnx")              # model.onnx + config.json + onnx.json
    lm = OnnxCausalLM("exported/nlg-onnx")               # an ONNX Runtime session
    tokens = lm.generate(input_ids, max_new_tokens=20)   # greedy, reusing the KV cache

What is exported:

* **TuringNLG** (``TuringNLGForCausalLM``): one graph that takes ``input_ids [batch, new]``,
  ``attention_mask [batch, past + new]`` and, per layer, ``past_key_values.{i}.key`` /
  ``.value`` (``[batch, heads, past, head_dim]``; ``past`` may be 0 for the prompt) and returns
  ``logits [batch, new, vocab]`` and ``present.{i}.key`` / ``.value`` (the cache extended by the new
  tokens). The same graph runs the prompt and every decoding step, so decoding is O(1) per token.
* **TuringNLU** (the bare encoder or any head): ``input_ids``, ``attention_mask`` (and
  ``token_type_ids`` when the model has more than one segment) -> the head's outputs:
  ``logits`` (masked LM, sequence / token classification), ``start_logits`` / ``end_logits``
  (question answering), ``last_hidden_state`` (+ ``pooler_output``) for the bare encoder.

Batch and sequence lengths are dynamic. The graph is traced from a padded example so that the
padding-mask path is the one recorded (it is exact for unpadded input too); TuringNLU's unpadded
execution is switched off for the export (ONNX graphs have no data-dependent shapes).
``onnx.json`` next to ``model.onnx`` lists the input / output names and the cache layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from ..io import atomic_directory
from ..errors import UsageError

ONNX_FILE = "model.onnx"
SPEC_FILE = "onnx.json"
DEFAULT_OPSET = 17


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance (nothing was written)."""


@dataclass
class OnnxSpec:
    """What ``onnx.json`` records about an exported graph."""

    kind: str  # "causal-lm" or the TuringNLU class name
    architecture: str
    inputs: list[str]
    outputs: list[str]
    opset: int
    num_layers: int = 0
    num_heads: int = 0
    head_dim: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _is_nlg(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "turing_nlg"


def _is_nlu(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "turing_nlu"


# --------------------------------------------------------------------------------------------- #
# Wrappers: tensors in, tensors out (ONNX graphs take no Cache objects or ModelOutputs)
# --------------------------------------------------------------------------------------------- #
class _CausalLMWithPast(nn.Module):
    """``(input_ids, attention_mask, *past) -> (logits, *present)`` around a TuringNLGForCausalLM."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True,
                         return_dict=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        present = []
        for i in range(self.num_layers):
            layer = cache.layers[i]
            present += [layer.keys, layer.values]
        return (out.logits, *present)


_NLU_OUTPUTS = {
    "TuringNLUModel": ("last_hidden_state", "pooler_output"),
    "TuringNLUForMaskedLM": ("logits",),
    "TuringNLUForSequenceClassification": ("logits",),
    "TuringNLUForTokenClassification": ("logits",),
    "TuringNLUForQuestionAnswering": ("start_logits", "end_logits"),
}


class _EncoderOutputs(nn.Module):
    """``(input_ids, attention_mask[, token_type_ids]) -> the head's output tensors``."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(getattr(out, name) for name in self.outputs)


@contextlib.contextmanager
def _export_mode(model: nn.Module):
    """Eval mode, the portable SDPA attention and (TuringNLU) padded execution; restored afterwards."""
    config = model.config
    saved = (model.training, config._attn_implementation, getattr(config, "unpad_inputs", None))
    model.eval()
    config._attn_implementation = "sdpa"
    if saved[2] is not None:
        config.unpad_inputs = False
    try:
        yield
    finally:
        model.train(saved[0])
        config._attn_implementation = saved[1]
        if saved[2] is not None:
            config.unpad_inputs = saved[2]


# --------------------------------------------------------------------------------------------- #
# Example inputs (fixed, padded: the traced graph then includes the padding-mask path)
# --------------------------------------------------------------------------------------------- #
def example_inputs(model: nn.Module, batch: int = 2, seq: int = 8, past: int = 0, seed: int = 0
                   ) -> dict[str, torch.Tensor]:
    """A fixed input for ``model`` (named as the ONNX graph's inputs); row 0 is left-padded by 2."""
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    if _is_nlg(model):
        vocab = config.real_vocab_size
        seq = min(seq, config.max_position_embeddings - past)
        feeds = {"input_ids": torch.randint(0, vocab, (batch, seq), generator=gen)}
        mask = torch.ones(batch, past + seq, dtype=torch.long)
        if batch > 1 and past + seq > 2:
            mask[0, :2] = 0
        feeds["attention_mask"] = mask
        shape = (batch, config.num_attention_heads, past, config.hidden_size // config.num_attention_heads)
        for i in range(config.num_hidden_layers):
            feeds[f"past_key_values.{i}.key"] = torch.randn(shape, generator=gen)
            feeds[f"past_key_values.{i}.value"] = torch.randn(shape, generator=gen)
        return {k: v.to(device) for k, v in feeds.items()}
    if not _is_nlu(model):
        raise UsageError(f"cannot export {type(model).__name__} to ONNX: pass a TuringNLG or TuringNLU model.")
    seq = min(seq, config.max_sequence_length)
    low = 0 if config.pad_token_id is None else config.pad_token_id + 1
    low = min(low, config.vocab_size - 1)
    ids = torch.randint(low, config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and seq > 2:
        mask[0, -2:] = 0  # encoders pad on the right
        if config.pad_token_id is not None:
            ids[0, -2:] = config.pad_token_id
    feeds = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size > 1:
        types = torch.zeros(batch, seq, dtype=torch.long)
        types[:, seq // 2:] = 1
        feeds["token_type_ids"] = types
    return {k: v.to(device) for k, v in feeds.items()}


def _graph(model: nn.Module) -> tuple[nn.Module, OnnxSpec, dict[str, dict[int, str]]]:
    config = model.config
    if _is_nlg(model):
        if not hasattr(model, "lm_head"):
            raise UsageError("ONNX export of TuringNLG needs TuringNLGForCausalLM (the model with its LM head).")
        layers = config.num_hidden_layers
        past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        spec = OnnxSpec(kind="causal-lm", architecture=type(model).__name__,
                        inputs=["input_ids", "attention_mask", *past], outputs=["logits", *present],
                        opset=DEFAULT_OPSET, num_layers=layers, num_heads=config.num_attention_heads,
                        head_dim=config.hidden_size // config.num_attention_heads,
                        extra={"vocab_size": config.real_vocab_size, "eos_token_id": config.eos_token_id})
        axes = {"input_ids": {0: "batch", 1: "new_tokens"}, "attention_mask": {0: "batch", 1: "total_tokens"},
                "logits": {0: "batch", 1: "new_tokens"}}
        axes.update({name: {0: "batch", 2: "past_tokens"} for name in past})
        axes.update({name: {0: "batch", 2: "total_tokens"} for name in present})
        return _CausalLMWithPast(model), spec, axes
    name = type(model).__name__
    if not _is_nlu(model) or name not in _NLU_OUTPUTS:
        raise UsageError(
            f"cannot export {name} to ONNX; exportable: TuringNLGForCausalLM, {', '.join(_NLU_OUTPUTS)} "
            "(an ELECTRA pretraining model exports through its discriminator: TuringNLUModel.from_pretrained)."
        )
    outputs = _NLU_OUTPUTS[name]
    if name == "TuringNLUModel" and model.pooler is None:
        outputs = outputs[:1]
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if config.type_vocab_size > 1 else [])
    spec = OnnxSpec(kind=name, architecture=name, inputs=inputs, outputs=list(outputs), opset=DEFAULT_OPSET)
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
    for out in outputs:
        axes[out] = {0: "batch"} if out in ("pooler_output",) or (
            out == "logits" and name == "TuringNLUForSequenceClassification") else {0: "batch", 1: "sequence"}
    return _EncoderOutputs(model, outputs), spec, axes


# --------------------------------------------------------------------------------------------- #
# Export
# --------------------------------------------------------------------------------------------- #
def export_onnx(
    model: Union[nn.Module, str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    *,
    opset: int = DEFAULT_OPSET,
    tokenizer: Any = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` (or a checkpoint folder) to ``out_dir/model.onnx``; returns a report.

    ``out_dir`` also receives ``config.json``, ``onnx.json`` and the tokenizer when one is given
    or found next to the checkpoint. It is written under a temporary name and renamed when complete.
    With ``verify`` the graph is run with ONNX Runtime on a fixed padded input (for TuringNLG also
    with a non-empty cache) and the largest difference to PyTorch is reported; above ``atol`` the
    export fails and nothing is written.
    """
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model = load_turing_model(source)
        if tokenizer is None:
            tokenizer = _try_tokenizer(source)
    model = model.to("cpu").float()
    wrapper, spec, axes = _graph(model)
    spec.opset = opset
    out = Path(out_dir)
    with atomic_directory(out, overwrite=True) as tmp:
        with _export_mode(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side checks on the example
            feeds = example_inputs(model, past=2 if _is_nlg(model) else 0)
            args = tuple(feeds[n] for n in spec.inputs)
            torch.onnx.export(
                wrapper, args, str(tmp / ONNX_FILE), input_names=spec.inputs, output_names=spec.outputs,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
        report: dict[str, Any] = {"path": str(out / ONNX_FILE), "kind": spec.kind,
                                  "size_mb": (tmp / ONNX_FILE).stat().st_size / 2**20}
        if verify:
            report["max_abs_diff"] = max_abs_difference(model, tmp / ONNX_FILE, spec)
            if not report["max_abs_diff"] <= atol:
                raise OnnxMismatchError(
                    f"ONNX Runtime's outputs differ from PyTorch's by {report['max_abs_diff']:.3g} (> {atol:g}); "
                    "the export is wrong, nothing was written."
                )
    return report


def load_turing_model(path: Union[str, os.PathLike]) -> nn.Module:
    """The Turing model a checkpoint folder holds, with the head its ``architectures`` names."""
    from transformers import AutoConfig

    import turing_models.nlg  # noqa: F401  (registers the Auto classes)
    import turing_models.nlu as nlu

    path = str(path)
    if not (Path(path) / "config.json").is_file():
        raise UsageError(f"{path} is not a model folder (no config.json); pass a save_pretrained folder.")
    config = AutoConfig.from_pretrained(path)
    if config.model_type == "turing_nlg":
        from turing_models.nlg import TuringNLGForCausalLM

        return TuringNLGForCausalLM.from_pretrained(path)
    if config.model_type != "turing_nlu":
        raise UsageError(f"{path} holds a {config.model_type!r} model; ONNX export takes TuringNLG / TuringNLU "
                         "folders (convert public checkpoints first: recipes/convert.py to-turing).")
    arch = (config.architectures or ["TuringNLUModel"])[0]
    cls = getattr(nlu, arch, None)
    if cls is None or arch == "TuringNLUForPreTraining":
        cls = nlu.TuringNLUModel
    return cls.from_pretrained(path)


def _try_tokenizer(path: str):
    from transformers import AutoTokenizer

    if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- #
# ONNX Runtime
# --------------------------------------------------------------------------------------------- #
def session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An ONNX Runtime CPU session for ``path`` (a ``model.onnx`` file or its folder)."""
    import onnxruntime as ort

    path = Path(path)
    if path.is_dir():
        path = path / ONNX_FILE
    if not path.is_file():
        raise UsageError(f"{path} does not exist; export first: recipes/convert.py onnx <model> <out>.")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_difference(model: nn.Module, onnx_path: Union[str, os.PathLike], spec: Optional[OnnxSpec] = None) -> float:
    """Largest |ONNX Runtime - PyTorch| over every output, on fixed padded inputs (for TuringNLG:
    once with an empty cache, once with a cache of 3 tokens)."""
    if spec is None:
        _, spec, _ = _graph(model)
    sess = session(onnx_path)
    wrapper, _, _ = _graph(model)
    cases = [0, 3] if _is_nlg(model) else [0]
    worst = 0.0
    with _export_mode(model), torch.no_grad():
        for past in cases:
            feeds = example_inputs(model, batch=3, seq=5, past=past, seed=1 + past)
            expected = wrapper(*(feeds[n] for n in spec.inputs))
            got = sess.run(spec.outputs, {n: feeds[n].cpu().numpy() for n in spec.inputs})
            for e, g in zip(expected, got):
                worst = max(worst, float(np.abs(e.float().cpu().numpy() - g).max()))
    return worst


class OnnxCausalLM:
    """Greedy decoding of an exported TuringNLG with ONNX Runtime, reusing the KV cache.

    The prompt runs once with an empty cache; each step then feeds one token and the cache the
    previous step returned.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None):
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        spec_file = folder / SPEC_FILE
        if not spec_file.is_file():
            raise UsageError(f"{folder} has no {SPEC_FILE}; export it with recipes/convert.py onnx.")
        self.spec = OnnxSpec(**json.loads(spec_file.read_text()))
        if self.spec.kind != "causal-lm":
            raise UsageError(f"{folder} holds a {self.spec.kind} graph, not a TuringNLG causal LM.")
        self.session = session(folder, threads)

    def empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.spec.num_heads, 0, self.spec.head_dim)
        return {name: np.zeros(shape, dtype=np.float32) for name in self.spec.inputs[2:]}

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, cache: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward: logits of the new tokens and the extended cache."""
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64), **cache}
        outputs = self.session.run(self.spec.outputs, feeds)
        present = dict(zip(self.spec.inputs[2:], outputs[1:]))
        return outputs[0], present

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20) -> np.ndarray:
        """Greedy continuation of ``input_ids`` (``[batch, prompt]``, left-padded when ragged)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        cache = self.empty_cache(ids.shape[0])
        step_ids, tokens = ids, [ids]
        for _ in range(max_new_tokens):
            logits, cache = self.step(step_ids, mask, cache)
            step_ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            tokens.append(step_ids)
            mask = np.concatenate([mask, np.ones_like(step_ids)], axis=1)
        return np.concatenate(tokens, axis=1)


__all__ = ["OnnxCausalLM", "OnnxMismatchError", "OnnxSpec", "example_inputs", "export_onnx", "load_turing_model", "max_abs_difference",
           "session"]
