"""Loading checkpoints into the Turing families: one generic path for every format.

A family's ``from_pretrained`` calls :func:`load_pretrained`, which

1. reads ``config.json`` once (:func:`turing_models.io.read_config`; folders and Hub ids alike);
2. for the family's own format (``model_type`` of its config class) checks every tensor's name and
   shape from the file headers, then lets transformers load the folder with that config object;
3. for a foreign format (GPT-2, BERT, ...) asks the :class:`StateDictAdapter` registered for it to
   map the config and the tensor names, builds the model on the meta device, and streams the
   tensors in one at a time (large ones in row chunks), converted as they are read, so loading
   holds one copy of the weights.

Adapters live beside their families (``turing_models/nlg/adapter_gpt2.py``,
``turing_models/nlu/adapter_bert.py``, as torchtitan keeps a ``state_dict_adapter.py`` per model)
and register themselves when the family package is imported; the model files never import them.
Every damaged, malicious or mismatched checkpoint is one :class:`~turing_models.errors.UsageError`:
safetensors are checked by :func:`turing_models.io.safetensors_header`, and ``pytorch_model.bin``
is read only by :func:`turing_models.io.safe_torch_load` (never unpickled into code).

This module imports :mod:`turing_models.io` and :mod:`turing_models.layers`, never a family.
"""

from __future__ import annotations

import abc
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch

from ..errors import UsageError
from ..io import read_config, read_json, safe_torch_load, safetensors_header
from .config import LEGACY_QKV_LAYOUT, QKV_LAYOUT, mark_qkv_layout
from .tensor_parallel import interleave_qkv

logger = logging.getLogger(__name__)

#: ``from_pretrained`` arguments that locate files (huggingface_hub / transformers' cached_file)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
#: ``from_pretrained`` arguments that are not config overrides
LOADER_KWARGS = HUB_KWARGS + (
    "use_safetensors", "weights_only", "trust_remote_code", "variant", "dtype", "torch_dtype", "device_map",
    "attn_implementation", "experts_implementation", "output_loading_info", "ignore_mismatched_sizes",
    "key_mapping", "quantization_config", "max_memory", "offload_folder", "offload_buffers", "tp_plan", "tp_size",
    "device_mesh", "distributed_config", "_from_auto", "_from_pipeline", "_commit_hash", "adapter_kwargs",
    "adapter_name", "use_kernels", "kernel_config", "generation_config", "state_dict", "config", "disable_mmap",
    "fusion_config", "tqdm_class", "allow_all_kernels", "gguf_file",
)

#: source bytes read per step when streaming a large tensor
CHUNK_BYTES = 16 * 2**20


# --------------------------------------------------------------------------------------------- #
# Adapters
# --------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Source:
    """How one model tensor is made from checkpoint tensors.

    ``keys``: one checkpoint tensor, or three (q, k, v) fused into the per-head ``qkv`` layout.
    ``transpose``: a Conv1D ``[in, out]`` weight becoming a Linear ``[out, in]`` one.
    ``qkv_heads``: the tensor is a fused ``qkv`` projection of that many heads; a single ``[q | k |
    v]`` source is interleaved per head (:func:`turing_models.layers.tensor_parallel.interleave_qkv`).
    """

    keys: tuple[str, ...]
    transpose: bool = False
    qkv_heads: Optional[int] = None

    def shape(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        """The converted tensor's shape, from the checkpoint's shapes."""
        first = tuple(shapes[self.keys[0]])
        if self.transpose:
            first = tuple(reversed(first))
        if len(self.keys) == 3:
            first = (sum(tuple(shapes[k])[0] for k in self.keys), *first[1:])
        return first


class StateDictAdapter(abc.ABC):
    """The key map between one foreign checkpoint format and one Turing family.

    Subclasses set ``family`` (the Turing ``model_type``), ``model_types`` (the foreign
    ``config.json`` ``model_type`` values) and ``name`` (for messages), and implement
    :meth:`config_from_foreign` and :meth:`plan`.
    """

    family: str = ""
    model_types: tuple[str, ...] = ()
    name: str = ""
    loads_into: str = ""  # the classes it loads into, for messages

    @abc.abstractmethod
    def config_from_foreign(self, raw: dict[str, Any], **overrides: Any):
        """The family's config for a foreign ``config.json`` dict (a :class:`UsageError` if it cannot be)."""

    @abc.abstractmethod
    def plan(self, shapes: dict[str, tuple[int, ...]], config) -> dict[str, Source]:
        """``{model key: Source}`` for checkpoint tensors of the given shapes, keys named as in the
        family's largest head class (base model under its ``base_model_prefix``). Unknown tensors
        are a :class:`UsageError`; tensors to skip are left out."""

    def describe(self, source: Source) -> str:
        """How a tensor is named in messages (the checkpoint's own name)."""
        return repr(source.keys[0])

    def initializable(self, key: str) -> bool:
        """True when the model tensor ``key`` may be freshly initialised if the checkpoint lacks it
        (a task head on a base checkpoint); otherwise a missing tensor is an error."""
        return False


_ADAPTERS: dict[tuple[str, str], StateDictAdapter] = {}


def register_adapter(adapter: StateDictAdapter) -> StateDictAdapter:
    """Make ``adapter`` convert its ``model_types`` into its ``family`` on load. Idempotent."""
    for model_type in adapter.model_types:
        _ADAPTERS[(adapter.family, model_type)] = adapter
    return adapter


def adapter_for(family: str, model_type: Optional[str]) -> Optional[StateDictAdapter]:
    return _ADAPTERS.get((family, model_type))


def foreign_types(family: str) -> list[str]:
    return sorted(t for f, t in _ADAPTERS if f == family)


# --------------------------------------------------------------------------------------------- #
# Resolving files (folders or Hub ids, huggingface_hub's cache and offline mode)
# --------------------------------------------------------------------------------------------- #
def resolve_file(path_or_id, filename: str, hub_kwargs: Optional[dict] = None, required: bool = False) -> Optional[str]:
    """The local path of ``filename`` in a folder or Hub id (the Hub cache included), or None."""
    from transformers.utils import cached_file

    try:
        return cached_file(
            str(path_or_id), filename, _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False, **(hub_kwargs or {}),
        )
    except (OSError, ValueError) as exc:
        if not required:
            return None
        raise UsageError(f"cannot read {filename} of checkpoint {str(path_or_id)!r}: {' '.join(str(exc).split())}") from None


def looks_like_local_path(path_or_id) -> bool:
    """True for strings that can only be a local path (never a valid Hub id)."""
    text = str(path_or_id)
    return (isinstance(path_or_id, os.PathLike) or text.startswith(("/", "./", "../", "~", "\\"))
            or text.count("/") > 1 or os.sep in text.replace("/", "") or Path(text).exists())


def check_local_path(path_or_id) -> None:
    """A path-looking checkpoint that does not exist -> :class:`UsageError` (no Hub lookup)."""
    if isinstance(path_or_id, (str, os.PathLike)) and not str(path_or_id).strip():
        raise UsageError("checkpoint path is empty; pass a folder or a Hub id")
    if looks_like_local_path(path_or_id) and not Path(os.path.expanduser(str(path_or_id))).exists():
        raise UsageError(
            f"checkpoint folder {str(path_or_id)!r} does not exist; pass a save_pretrained folder or a Hub id"
        )


def read_checkpoint_config(path_or_id, **hub_kwargs) -> dict:
    """``config.json`` of a folder or Hub id, as a dict, read once. Missing -> :class:`UsageError`."""
    check_local_path(path_or_id)
    file = resolve_file(path_or_id, "config.json", hub_kwargs, required=True)
    if file is None:
        where = "folder" if Path(str(path_or_id)).is_dir() else "folder or Hub id (in the local cache, or online)"
        raise UsageError(f"checkpoint {str(path_or_id)!r}: no config.json found; pass a save_pretrained {where}")
    return read_config(file)


def weight_files(path_or_id, hub_kwargs: Optional[dict] = None) -> list[str]:
    """The weight files of a checkpoint: model.safetensors, its sharded index, or pytorch_model.bin."""
    hub_kwargs = hub_kwargs or {}
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        file = resolve_file(path_or_id, single, hub_kwargs)
        if file is not None:
            return [file]
        index_file = resolve_file(path_or_id, index, hub_kwargs)
        if index_file is not None:
            data = read_json(index_file, what="weight index")
            try:
                shards = sorted(set(data["weight_map"].values()))
            except (KeyError, TypeError, AttributeError):
                raise UsageError(f"weight index {index_file} has no weight_map; download or save it again") from None
            files = [resolve_file(path_or_id, s, hub_kwargs) for s in shards]
            missing = [s for s, f in zip(shards, files) if f is None]
            if missing:
                raise UsageError(f"checkpoint {str(path_or_id)!r}: weight shards {missing} listed in {index} are missing")
            return files
    raise UsageError(
        f"checkpoint {str(path_or_id)!r} has no weight files (model.safetensors, its sharded index, or "
        "pytorch_model.bin); re-save it with save_pretrained or download it completely"
    )


def tensor_index(files: Iterable[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (file, shape)}``, from the safetensors headers (checked for damage) or, for
    .bin files, from :func:`~turing_models.io.safe_torch_load` on the meta device (no data read,
    no code run)."""
    index: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in files:
        if file.endswith(".safetensors"):
            for key, meta in safetensors_header(file).items():
                index[key] = (file, tuple(meta["shape"]))
        else:
            state = safe_torch_load(file, map_location="meta")
            if not isinstance(state, dict):
                raise UsageError(f"{file} does not hold a state dict of tensors; re-save it with save_pretrained")
            for key, t in state.items():
                if isinstance(t, torch.Tensor):
                    index[key] = (file, tuple(t.shape))
    return index


def tensor_shapes(files: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the headers (see :func:`tensor_index`)."""
    return {key: shape for key, (_, shape) in tensor_index(files).items()}


# --------------------------------------------------------------------------------------------- #
# Streaming
# --------------------------------------------------------------------------------------------- #
def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _convert_whole(parts: list[torch.Tensor], source: Source, dtype: Optional[torch.dtype]) -> torch.Tensor:
    parts = [_cast(p, dtype) for p in parts]
    if source.transpose:
        parts = [p.t() for p in parts]
    if len(parts) == 3:
        out = torch.cat(parts, dim=0)
        return interleave_qkv(out, source.qkv_heads) if source.qkv_heads else out
    out = parts[0]
    if source.qkv_heads:
        out = interleave_qkv(out, source.qkv_heads)
    return out.contiguous()


def _owned(result: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
    """``result`` in its own memory (never a view of a memory-mapped source)."""
    ptr = result.untyped_storage().data_ptr()
    if any(ptr == s.untyped_storage().data_ptr() for s in sources):
        return result.clone()
    return result


def _read_safetensors(file: str, source: Source, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """One model tensor from a safetensors file, converted into freshly allocated memory.

    safetensors memory-maps the file and the pages read stay resident while the mapping is open, so
    a large single-source tensor is read in row chunks, each through its own short-lived mapping:
    at most :data:`CHUNK_BYTES` of the file is resident beside the result."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as fh:
        key = source.keys[0]
        shape = tuple(fh.get_slice(key).get_shape())
        probe = fh.get_slice(key)[0:0] if shape else fh.get_tensor(key)
        row_bytes = probe.element_size() * (int(torch.Size(shape[1:]).numel()) if shape else 1)
        if len(source.keys) == 3 or not shape or shape[0] * row_bytes <= CHUNK_BYTES:  # small: in one piece
            parts = [fh.get_tensor(k) for k in source.keys]
            return _owned(_convert_whole(parts, source, dtype), *parts)
    out_dtype = dtype if dtype is not None and probe.is_floating_point() else probe.dtype
    result = torch.empty(tuple(reversed(shape)) if source.transpose else shape, dtype=out_dtype)
    rows = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, shape[0], rows):
        with safe_open(file, framework="pt") as fh:
            part = fh.get_slice(key)[start:start + rows]
            if source.transpose:  # Conv1D [in, out] rows become Linear [out, in] columns
                part = part.t()
                if source.qkv_heads:
                    part = interleave_qkv(part, source.qkv_heads)
                result[:, start:start + rows].copy_(part)
            else:
                result[start:start + rows].copy_(part)
            del part
    if source.qkv_heads and not source.transpose:
        result = interleave_qkv(result, source.qkv_heads).contiguous()
    return result


def stream_tensors(index: dict[str, tuple[str, tuple[int, ...]]], plan: dict[str, Source],
                   dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(model key, tensor)`` for every entry of ``plan``, one tensor at a time; each owns its
    memory, and its sources are released before the next is read. ``index`` is
    :func:`tensor_index` of the checkpoint's files."""
    where = {key: file for key, (file, _) in index.items()}
    files = list(dict.fromkeys(where.values()))
    by_file: dict[str, list[str]] = {}
    for target, source in plan.items():
        by_file.setdefault(where[source.keys[0]], []).append(target)
    for file in files:
        targets = by_file.get(file, [])
        if not targets:
            continue
        if file.endswith(".safetensors") and all(where[k] == file for t in targets for k in plan[t].keys):
            for target in targets:
                yield target, _read_safetensors(file, plan[target], dtype)
            continue
        # pytorch_model.bin (memory-mapped, tensors only), or a fused tensor split across shards
        state: dict[str, torch.Tensor] = {}
        for f in {where[k] for t in targets for k in plan[t].keys}:
            state.update(_load_all(f))
        for target in targets:
            parts = [state[k] for k in plan[target].keys]
            yield target, _owned(_convert_whole(parts, plan[target], dtype), *parts)
            for k in plan[target].keys:
                state.pop(k, None)
        del state


def convert_state_dict(adapter: StateDictAdapter, state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A foreign state dict already in memory -> the family's names and layouts (``adapter``'s plan)."""
    plan = adapter.plan({k: tuple(v.shape) for k, v in state_dict.items()}, config)
    return {target: _convert_whole([state_dict[k] for k in source.keys], source, None).contiguous()
            for target, source in plan.items()}


def _load_all(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        from ..io import load_safetensors

        return load_safetensors(file)
    return safe_torch_load(file, mmap=True)


# --------------------------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------------------------- #
def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(loader kwargs, config overrides)`` of ``from_pretrained``'s keyword arguments."""
    loader = {k: v for k, v in kwargs.items() if k in LOADER_KWARGS}
    overrides = {k: v for k, v in kwargs.items() if k not in LOADER_KWARGS}
    return loader, overrides


def expected_shapes(cls, config) -> dict[str, torch.Size]:
    """``{name: shape}`` of ``cls(config)``'s state dict, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = cls(copy.deepcopy(config))  # building a model may set fields; the caller's config stays as it is
    return {k: v.shape for k, v in model.state_dict().items()}


def _dtype(kwargs: dict[str, Any]) -> Optional[torch.dtype]:
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _transformers_from_pretrained(cls, path_or_id, *model_args, **kwargs):
    from transformers import PreTrainedModel

    return PreTrainedModel.from_pretrained.__func__(cls, path_or_id, *model_args, **kwargs)


def load_pretrained(cls, path_or_id, *model_args, **kwargs):
    """``cls.from_pretrained`` for the Turing families: native, or converted by a registered adapter.

    ``path_or_id`` is a folder or a Hub id, resolved with huggingface_hub as transformers does.
    Keyword arguments are transformers' (``dtype``, ``device_map``, ``attn_implementation`` ...)
    plus config overrides (``num_labels=3`` ...). Bad checkpoints raise one :class:`UsageError`."""
    family = cls.config_class.model_type
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
    given = kwargs.get("config")
    if path_or_id is None or kwargs.get("state_dict") is not None:
        return _transformers_from_pretrained(cls, path_or_id, *model_args, **kwargs)
    check_local_path(path_or_id)
    if given is not None and not isinstance(given, (str, os.PathLike)):  # a config object: native weights
        if not kwargs.get("ignore_mismatched_sizes"):
            check_native_weights(cls, given, path_or_id, hub_kwargs)
        return _native(cls, path_or_id, model_args, kwargs)

    raw = read_checkpoint_config(given or path_or_id, **hub_kwargs)
    model_type = raw.get("model_type")
    if model_type == family:
        loader, overrides = split_kwargs(kwargs)
        loader.pop("config", None)
        config = config_from_dict(cls.config_class, raw, path_or_id, **overrides)
        if not loader.get("ignore_mismatched_sizes"):
            check_native_weights(cls, config, path_or_id, hub_kwargs)
        return _native(cls, path_or_id, model_args, {**loader, "config": config})
    adapter = adapter_for(family, model_type)
    if adapter is None:
        foreign = foreign_types(family)
        raise UsageError(
            f"checkpoint {str(path_or_id)!r} has model_type={model_type!r}; {cls.__name__} loads {family!r} "
            f"checkpoints and converts {', '.join(repr(t) for t in foreign) or 'no others'}"
            + _other_family_hint(model_type)
        )
    return load_foreign(cls, adapter, path_or_id, raw, kwargs, hub_kwargs)


def _other_family_hint(model_type: Optional[str]) -> str:
    for (family, foreign), adapter in _ADAPTERS.items():
        if foreign == model_type:
            return f" (a {model_type!r} checkpoint loads into {adapter.loads_into or family})"
    return ""


def config_from_dict(config_class, raw: dict[str, Any], where, **overrides):
    """The family's config from its ``config.json`` dict, with field overrides."""
    clean = {k: v for k, v in mark_qkv_layout(raw).items() if k != "model_type"}
    try:
        config = config_class.from_dict({**clean, **overrides})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"checkpoint {str(where)!r}: invalid config.json: {' '.join(str(exc).split())}") from None
    config._name_or_path = str(where)
    return config


def _native(cls, path_or_id, model_args, kwargs):
    config = kwargs.get("config")
    legacy = getattr(config, "qkv_layout", QKV_LAYOUT) == LEGACY_QKV_LAYOUT
    try:
        model = _transformers_from_pretrained(cls, path_or_id, *model_args, **kwargs)
    except OSError as exc:
        raise UsageError(f"cannot load checkpoint {str(path_or_id)!r}: {' '.join(str(exc).split())}") from None
    if legacy:
        interleave_legacy_qkv(model)
        logger.info("%s: converted the [q | k | v] rows of an older checkpoint to the per-head layout", path_or_id)
    return model


@torch.no_grad()
def interleave_legacy_qkv(model) -> None:
    """Permute every fused ``qkv`` projection of ``model`` from ``[q | k | v]`` rows (checkpoints
    written before the per-head layout) to per-head rows, in place."""
    for module in model.modules():
        qkv, heads = getattr(module, "qkv", None), getattr(module, "num_heads", None)
        if isinstance(qkv, torch.nn.Linear) and isinstance(heads, int):
            for param in (qkv.weight, qkv.bias):
                if param is not None:
                    param.copy_(interleave_qkv(param, heads))


def check_native_weights(cls, config, path_or_id, hub_kwargs: dict) -> None:
    """Every tensor of a native checkpoint has the shape ``cls(config)`` expects (headers only);
    damaged safetensors and pickled .bin payloads are refused here, before transformers reads them."""
    files = weight_files(path_or_id, hub_kwargs)
    expected = expected_shapes(cls, config)
    prefix = cls.base_model_prefix + "."
    for key, shape in tensor_shapes(files).items():
        name = key
        if name not in expected and name.startswith(prefix) and name[len(prefix):] in expected:
            name = name[len(prefix):]
        elif name not in expected and prefix + name in expected:
            name = prefix + name
        if name in expected and tuple(expected[name]) != tuple(shape):
            raise UsageError(
                f"checkpoint {str(path_or_id)!r}: tensor {key!r} has shape {list(shape)} but the config needs "
                f"{list(expected[name])}; the weights and config.json do not belong together (check vocab_size / "
                "hidden_size / num_labels, or pass ignore_mismatched_sizes=True to re-initialise a head)"
            )


def load_foreign(cls, adapter: StateDictAdapter, path_or_id, raw: dict[str, Any], kwargs: dict[str, Any],
                 hub_kwargs: dict[str, Any]):
    """Read the header once, build on meta, map keys, stream tensors."""
    loader, overrides = split_kwargs(kwargs)
    sharded = [k for k in ("tp_plan", "tp_size", "device_mesh", "distributed_config") if loader.get(k) is not None]
    if sharded:
        raise UsageError(
            f"{sharded[0]} applies to Turing checkpoints, and {str(path_or_id)!r} is a {adapter.name} one; convert it "
            "first (recipes/convert.py to-turing SOURCE OUTPUT), then load OUTPUT with tensor parallelism"
        )
    given = loader.get("config")
    if given is not None and not isinstance(given, (str, os.PathLike)):
        config = given
        for k, v in overrides.items():
            setattr(config, k, v)
    else:
        config = adapter.config_from_foreign(raw, **overrides)
    if loader.get("attn_implementation") is not None:
        config._attn_implementation = loader["attn_implementation"]
    config._name_or_path = str(path_or_id)

    index = tensor_index(weight_files(path_or_id, hub_kwargs))  # the headers, read once
    shapes = {key: shape for key, (_, shape) in index.items()}
    plan = adapter.plan(shapes, config)
    expected = expected_shapes(cls, config)
    prefix = cls.base_model_prefix + "."
    fitted: dict[str, Source] = {}
    for target, source in plan.items():  # names of the largest head class -> names of cls
        name = target if target in expected else (target[len(prefix):] if target.startswith(prefix) else None)
        if name is None or name not in expected:
            continue  # a head this class does not have (an MLM head loaded into a classifier)
        want, got = tuple(expected[name]), source.shape(shapes)
        if want != got:
            if loader.get("ignore_mismatched_sizes"):
                continue
            ckpt = tuple(reversed(want)) if source.transpose else want
            raise UsageError(
                f"{adapter.name} checkpoint tensor {adapter.describe(source)} has shape "
                f"{list(shapes[source.keys[0]])} but its config needs {list(ckpt)}; the weights and config.json "
                "do not belong together (check vocab_size / hidden_size / num_labels)"
            )
        fitted[name] = source

    tied = _tied_targets(cls, config)
    fitted = {k: v for k, v in fitted.items() if k not in tied}
    missing = sorted(k for k in expected if k not in fitted and k not in tied and not _is_buffer_like(k))
    required = [k for k in missing if not adapter.initializable(k if k.startswith(prefix) else prefix + k)]
    if required:
        raise UsageError(
            f"{adapter.name} checkpoint {str(path_or_id)!r} lacks {len(required)} tensors the model needs, "
            f"e.g. {required[:3]}; download it completely or pass a matching checkpoint"
        )

    with torch.device("meta"):
        model = cls(config)
    state = dict(stream_tensors(index, fitted, _dtype(loader)))
    model.load_state_dict(state, strict=False, assign=True)
    del state
    model.tie_weights()  # tied heads take the loaded embeddings before anything is initialised
    _initialize_missing(model)
    model.tie_weights()
    if missing:
        logger.warning("%s: %d tensors are not in the %s checkpoint and were freshly initialised: %s",
                       cls.__name__, len(missing), adapter.name, ", ".join(missing[:6]))
    model.eval()
    _generation_config(model, path_or_id, hub_kwargs)
    return _place(model, loader.get("device_map"))


def _is_buffer_like(key: str) -> bool:
    return key.endswith(("position_ids", "token_type_ids"))


def _tied_targets(cls, config) -> set[str]:
    tied = getattr(cls, "_tied_weights_keys", None) or {}
    if not getattr(config, "tie_word_embeddings", True):
        return set()
    return set(tied.keys() if isinstance(tied, dict) else tied)


@torch.no_grad()
def _initialize_missing(model) -> None:
    """Parameters and buffers the checkpoint did not provide: materialise and initialise them."""
    for module in model.modules():
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if any(t.is_meta for _, t in own):
            loaded = {name: t for name, t in own if not t.is_meta}
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
            for name, t in loaded.items():  # what the checkpoint gave stays as it was
                if name in module._parameters:
                    module._parameters[name] = t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t)
                else:
                    module._buffers[name] = t


def _generation_config(model, path_or_id, hub_kwargs) -> None:
    file = resolve_file(path_or_id, "generation_config.json", hub_kwargs)
    if file is not None and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(os.path.dirname(file))


def _place(model, device_map):
    if device_map is None:
        return model
    if isinstance(device_map, (str, torch.device, int)) and str(device_map) not in ("auto", "balanced", "sequential"):
        return model.to(device_map)
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map=device_map)


def config_from_pretrained(config_class, path_or_id, **kwargs):
    """``config_class.from_pretrained`` that also converts a foreign ``config.json`` through the
    family's adapter. Returns ``None`` for the family's own format (the caller reads it as usual)."""
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
    raw = read_checkpoint_config(path_or_id, **hub_kwargs)
    model_type = raw.get("model_type")
    if model_type in (None, config_class.model_type):
        return None
    adapter = adapter_for(config_class.model_type, model_type)
    if adapter is None:
        raise UsageError(
            f"cannot convert a {model_type!r} checkpoint: {config_class.__name__} reads {config_class.model_type!r} "
            f"configs and converts {', '.join(repr(t) for t in foreign_types(config_class.model_type))}"
            + _other_family_hint(model_type)
        )
    _, overrides = split_kwargs(kwargs)
    overrides = {k: v for k, v in overrides.items() if not k.startswith("_") and k != "return_unused_kwargs"}
    return adapter.config_from_foreign(raw, **overrides)


__all__ = [
    "CHUNK_BYTES",
    "Source",
    "StateDictAdapter",
    "adapter_for",
    "check_local_path",
    "config_from_pretrained",
    "convert_state_dict",
    "load_pretrained",
    "read_checkpoint_config",
    "register_adapter",
    "stream_tensors",
    "tensor_index",
    "tensor_shapes",
    "weight_files",
]
