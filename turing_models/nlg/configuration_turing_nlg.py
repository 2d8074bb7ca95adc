"""TuringNLG configuration: the decoder family's hyper-parameters and its named scales.

Every scale is a pre-LN GPT decoder with learned absolute positions and the GPT-2 BPE vocabulary
(50257 tokens). The embedding matrix is padded to a multiple of 128 rows (50304) so the output
projection is a tensor-core-friendly shape, as Megatron-LM does:

* ``vocab_size`` is the number of embedding rows (padded, 50304 for the named scales);
* ``real_vocab_size`` is the tokenizer's vocabulary (50257). Ids at or above it are padding:
  the model never predicts them (its logits have ``real_vocab_size`` columns) and the loss never
  normalises over them, so neither greedy decoding nor sampling can return one.

A config built directly (``TuringNLGConfig(vocab_size=...)``) has no padding unless
``real_vocab_size`` is given: ``real_vocab_size`` defaults to ``vocab_size`` (converted GPT-2
checkpoints, for example). ``TuringNLGConfig.from_name`` pads.
"""

from __future__ import annotations

import math
from typing import Optional

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ..errors import UsageError
from ..layers.attention import check_attn_implementation
from ..layers.config import FIELD_ALIASES, QKV_LAYOUT, apply_aliases, check_shared_fields, mark_qkv_layout

GPT2_VOCAB_SIZE = 50257
VOCAB_PAD_MULTIPLE = 128


def pad_vocab_size(size: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    """``size`` rounded up to a multiple of ``multiple`` (50257 -> 50304)."""
    return int(math.ceil(size / multiple) * multiple)


def _scale(layers: int, hidden: int, heads: int, context: int) -> dict[str, int]:
    return dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                max_position_embeddings=context)


# name -> config fields (the same style as NLU_SCALES)
NLG_SCALES: dict[str, dict[str, int]] = {
    "tiny": _scale(4, 256, 4, 256),  # CPU tests and the 5-minute CPU demo
    "125m": _scale(12, 768, 12, 2048),  # GPT-3 Small
    "350m": _scale(24, 1024, 16, 2048),  # GPT-3 Medium
    "760m": _scale(24, 1536, 16, 2048),  # GPT-3 Large
    "1.3b": _scale(24, 2048, 16, 2048),  # GPT-3 XL
    "2.7b": _scale(32, 2560, 32, 2048),  # GPT-3 2.7B
    "6.7b": _scale(32, 4096, 32, 2048),  # GPT-3 6.7B
    "8.3b": _scale(72, 3072, 32, 1024),  # Megatron-LM 8.3B
    "13b": _scale(40, 5120, 40, 2048),  # GPT-3 13B
    "17b": _scale(78, 4256, 28, 1024),  # Turing-NLG: head dim 152
}


@strict(accept_kwargs=True)
class TuringNLGConfig(PretrainedConfig):
    r"""Configuration of a TuringNLG decoder.

    Args:
        vocab_size: rows of the token embedding (and of the tied output projection), padding included.
        real_vocab_size: the tokenizer's vocabulary; ids ``>= real_vocab_size`` are padding rows that
            are never predicted. ``None`` means no padding (``= vocab_size``).
        max_position_embeddings: context length (learned absolute positions).
        hidden_size, num_hidden_layers, num_attention_heads: the transformer's shape.
        intermediate_size: FFN width; ``None`` means ``4 * hidden_size``.
        hidden_act: ``"gelu"`` (erf, Megatron), ``"gelu_tanh"`` (GPT-2's ``gelu_new``) or ``"relu"``
            (``activation`` is accepted as an alias; see :mod:`turing_models.layers.config`).
        layer_norm_eps: LayerNorm epsilon.
        hidden_dropout: dropout on the embeddings and on each block's two residual branches.
        attention_dropout: dropout on the attention probabilities.
        tie_word_embeddings: share the output projection with the token embedding.
        initializer_range: std of the normal init; residual output projections (attention ``dense``,
            MLP ``fc_out``) use ``initializer_range / sqrt(2 * num_hidden_layers)`` (GPT-2 / Megatron).
        fused_layernorm, fused_bias_gelu, fused_cross_entropy: use the Triton kernels of
            ``turing_kernels`` for these ops on CUDA (plain PyTorch elsewhere; results are the same).
        qkv_layout: row order of the fused ``qkv`` projection: ``"per_head"`` (``[heads, 3, head_dim]``,
            so tensor parallelism splits whole heads). ``config.json`` files written before it are read
            as ``"blocks"`` (``[q | k | v]``) and their weights are converted on load.
        attn_implementation: ``"turing"``, ``"sdpa"`` or ``"eager"``; ``None`` picks ``"turing"`` on
            CUDA with Triton and ``"sdpa"`` elsewhere.
    """

    model_type = "turing_nlg"
    attribute_map = FIELD_ALIASES
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    # Tensor-parallel plan of the decoder (transformers' styles; the LM head's is on
    # TuringNLGForCausalLM._tp_plan, and transformers adds "embedding_rowwise" for embed_tokens).
    # The fused qkv rows are per head ([heads, 3, head_dim]), so "colwise" hands each rank whole heads.
    base_model_tp_plan = {
        "layers.*.attention.qkv": "colwise",
        "layers.*.attention.dense": "rowwise",
        "layers.*.mlp.fc_in": "colwise",
        "layers.*.mlp.fc_out": "rowwise",
    }
    # Sequence parallelism (laid over the plan above): the residual stream is sharded on the
    # sequence from the embedding dropout to the final norm; the norms and dropouts run on the
    # local tokens, "colwise" gathers the stream before qkv / fc_in, and the row-parallel outputs
    # reduce-scatter onto it. Style names: turing_models.training.parallel.register_parallel_styles.
    base_model_sp_plan = {
        "embed_dropout": "sequence_scatter",
        "layers.*.input_layernorm": "sequence_parallel_stream",
        "layers.*.post_attention_layernorm": "sequence_parallel_stream",
        "layers.*.attention.dense": "rowwise_to_sequence",
        "layers.*.mlp.fc_out": "rowwise_to_sequence",
        "norm_f": "sequence_parallel_stream",
    }

    vocab_size: int = GPT2_VOCAB_SIZE
    real_vocab_size: Optional[int] = None
    max_position_embeddings: int = 1024
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: Optional[int] = None
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    hidden_dropout: float | int = 0.1
    attention_dropout: float | int = 0.1
    initializer_range: float = 0.02
    qkv_layout: str = QKV_LAYOUT
    fused_layernorm: bool = False
    fused_bias_gelu: bool = False
    fused_cross_entropy: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: Optional[int] = 50256
    eos_token_id: Optional[int | list[int]] = 50256
    pad_token_id: Optional[int] = None

    def __post_init__(self, **kwargs):
        apply_aliases(self, kwargs)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.real_vocab_size is None:
            self.real_vocab_size = self.vocab_size
        self._check()
        for field in ("bos_token_id", "eos_token_id"):  # the GPT-2 defaults mean nothing in a smaller vocabulary
            if getattr(self, field) == GPT2_VOCAB_SIZE - 1 and self.real_vocab_size < GPT2_VOCAB_SIZE:
                setattr(self, field, None)
        super().__post_init__(**kwargs)
        check_attn_implementation(self._attn_implementation)

    def _check(self) -> None:
        check_shared_fields(self)
        if not isinstance(self.real_vocab_size, int) or self.real_vocab_size < 1 or self.real_vocab_size > self.vocab_size:
            raise UsageError(
                f"TuringNLGConfig.real_vocab_size={self.real_vocab_size!r} is invalid: it must be a positive integer "
                f"that does not exceed vocab_size={self.vocab_size} (the embedding rows)"
            )

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' ``from_dict``; a ``config.json`` written before the per-head qkv layout is
        marked ``qkv_layout="blocks"`` so that loading converts its weights."""
        return super().from_dict(mark_qkv_layout(config_dict), **kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> "TuringNLGConfig":
        """The config of a named scale (see ``NLG_SCALES``); keyword arguments override fields."""
        key = str(name).lower()
        if key not in NLG_SCALES:
            raise UsageError(f"TuringNLGConfig: scale name={name!r} is unknown; allowed: {', '.join(NLG_SCALES)}")
        scale = NLG_SCALES[key]
        values = dict(
            vocab_size=pad_vocab_size(GPT2_VOCAB_SIZE),
            real_vocab_size=GPT2_VOCAB_SIZE,
            initializer_range=round(math.sqrt(1.0 / (3.0 * scale["hidden_size"])), 6),  # ~sqrt(1/(3h))
            **scale,
        )
        values.update(overrides)
        return cls(**values)


def nlg_num_parameters(config: TuringNLGConfig, exclude_embeddings: bool = False) -> int:
    """Closed-form parameter count of ``TuringNLGForCausalLM(config)`` (tied head counted once).

    Per block: fused QKV ``3h^2 + 3h``, attention output ``h^2 + h``, MLP ``2hf + f + h``, two
    LayerNorms ``4h``. Plus token and position embeddings, the final LayerNorm, and an untied head.
    """
    h, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    block = (3 * h * h + 3 * h) + (h * h + h) + (2 * h * f + f + h) + 4 * h
    total = n * block + 2 * h
    embeddings = config.vocab_size * h + config.max_position_embeddings * h
    if not config.tie_word_embeddings:
        total += config.vocab_size * h  # the untied output projection is not an embedding
    if not exclude_embeddings:
        total += embeddings
    return total


__all__ = ["NLG_SCALES", "TuringNLGConfig", "nlg_num_parameters", "pad_vocab_size"]
