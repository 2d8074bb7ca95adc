"""Configuration of the TuringNLU encoder family (BERT / RoBERTa / ELECTRA style).

``TuringNLUConfig`` spells the fields both families share as TuringNLG does (``hidden_act``,
``hidden_dropout``, ``attention_dropout``; BERT's ``hidden_dropout_prob`` and
``attention_probs_dropout_prob`` are accepted aliases, :mod:`turing_models.layers.config`), keeps
BERT's other names so public BERT, RoBERTa and XLM-R configs map onto it one to one, and
adds the few switches the Turing encoders need: pre- or post-LN, RoBERTa's position offset,
unpadded execution, the sentence-classification head style and the pretraining objective.

Named scales (``TuringNLUConfig.from_name``):

======  ======  ======  =====  =====  =======  ======================================
name    layers  hidden  heads  FFN    vocab    notes
======  ======  ======  =====  =====  =======  ======================================
tiny    4       256     4      1024   30522    BERT-mini shapes, for tests and demos
base    12      768     12     3072   30522    BERT-base (WordPiece)
large   24      1024    16     4096   30522    BERT-large (WordPiece)
xl      34      2048    32     8192   250002   T-ULRv5 scale, XLM-R SentencePiece, pre-LN
======  ======  ======  =====  =====  =======  ======================================
"""

from __future__ import annotations

from typing import Any, Optional

from transformers import PreTrainedConfig

from ..errors import UsageError
from ..layers.attention import check_attn_implementation
from ..layers.config import (
    ACTIVATIONS,
    FIELD_ALIASES,
    QKV_LAYOUT,
    apply_aliases,
    check_shared_fields,
    mark_qkv_layout,
)

NORM_POSITIONS = ("post", "pre")
CLASSIFIER_HEADS = ("pooler", "dense")
PRETRAINING_OBJECTIVES = ("mlm", "electra")

BERT_WORDPIECE_VOCAB = 30522
XLMR_SENTENCEPIECE_VOCAB = 250002

NLU_SCALES: dict[str, dict[str, Any]] = {
    "tiny": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
    # T-ULRv5 scales XLM-E to ~2.2B parameters with a 250k SentencePiece vocabulary. Pre-LN keeps
    # the deep stack stable; positions follow XLM-R (offset 2, 514 rows, one token type).
    "xl": dict(
        num_hidden_layers=34, hidden_size=2048, num_attention_heads=32, intermediate_size=8192,
        vocab_size=XLMR_SENTENCEPIECE_VOCAB, max_position_embeddings=514, position_offset=2,
        type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, norm_position="pre",
        layer_norm_eps=1e-5,
    ),
}


class TuringNLUConfig(PreTrainedConfig):
    r"""Configuration of a TuringNLU encoder.

    Args:
        vocab_size: token vocabulary (30522 BERT WordPiece, 250002 XLM-R SentencePiece).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: the shapes.
        hidden_act: FFN activation: ``"gelu"``, ``"gelu_tanh"`` or ``"relu"``.
        mlm_head_act: activation of the MLM head transform; ``None`` follows ``hidden_act`` (BERT),
            RoBERTa / XLM-R always use ``"gelu"``.
        hidden_dropout, attention_dropout, classifier_dropout: dropouts (BERT's
            ``hidden_dropout_prob`` / ``attention_probs_dropout_prob`` are accepted as aliases).
        max_position_embeddings: rows of the learned position table.
        position_offset: first position id of a sequence. 0 for BERT; RoBERTa / XLM-R use
            ``pad_token_id + 1`` (= 2): real tokens count up from the offset and padding takes
            ``offset - 1``. The longest sequence is ``max_position_embeddings - position_offset``.
        type_vocab_size: token types (segments); 2 for BERT, 1 for RoBERTa.
        initializer_range: std of the normal init.
        layer_norm_eps: LayerNorm epsilon (1e-12 BERT, 1e-5 RoBERTa).
        norm_position: ``"post"`` (BERT / RoBERTa, norm after each residual add) or ``"pre"``
            (norm before each sublayer plus a final norm).
        classifier_head: sentence classification on ``"pooler"`` (BERT: tanh pooler + linear) or
            ``"dense"`` (RoBERTa: dense + tanh + out_proj on the first token).
        unpad_inputs: run on the packed real tokens whenever the attention mask has padding
            (ModernBERT style). Outputs equal the padded path; switch off to run padded.
        pretraining_objective: ``"mlm"`` or ``"electra"`` (replaced-token detection with a small
            generator) for :class:`TuringNLUForPreTraining`.
        generator_hidden_size, generator_num_hidden_layers, generator_num_attention_heads,
        generator_intermediate_size: the ELECTRA generator (defaults: a quarter of the width,
            the same depth).
        rtd_loss_weight: weight of the replaced-token-detection loss (ELECTRA: 50).
        fused_layernorm, fused_bias_gelu, fused_cross_entropy: use the Triton kernels on CUDA.
        qkv_layout: row order of the fused ``qkv`` projection: ``"per_head"`` (``[heads, 3, head_dim]``,
            so tensor parallelism splits whole heads). ``config.json`` files written before it are read
            as ``"blocks"`` (``[q | k | v]``) and their weights are converted on load.
        source_model_type: the public format a converted checkpoint came from (``"bert"``,
            ``"roberta"``, ``"xlm-roberta"``); export writes this format back.
    """

    model_type = "turing_nlu"
    attribute_map = FIELD_ALIASES
    # Tensor-parallel plan of the encoder (transformers' styles; the MLM head's is on
    # TuringNLUForMaskedLM._tp_plan). The fused qkv rows are per head ([heads, 3, head_dim]), so
    # "colwise" hands each rank whole heads, on the padded and the unpadded (varlen) path alike.
    base_model_tp_plan = {
        # vocabulary-parallel, like the tied MLM decoder (both split on the vocabulary rows)
        "embeddings.word_embeddings": "embedding_rowwise",
        "layers.*.attention.qkv": "colwise",
        "layers.*.attention.out": "rowwise",
        "layers.*.mlp.fc_in": "colwise",
        "layers.*.mlp.fc_out": "rowwise",
    }

    vocab_size: int = BERT_WORDPIECE_VOCAB
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    mlm_head_act: Optional[str] = None
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: Optional[float] = None
    max_position_embeddings: int = 512
    position_offset: int = 0
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    norm_position: str = "post"
    classifier_head: str = "pooler"
    unpad_inputs: bool = True
    pretraining_objective: str = "mlm"
    generator_hidden_size: Optional[int] = None
    generator_num_hidden_layers: Optional[int] = None
    generator_num_attention_heads: Optional[int] = None
    generator_intermediate_size: Optional[int] = None
    rtd_loss_weight: float = 50.0
    qkv_layout: str = QKV_LAYOUT
    fused_layernorm: bool = False
    fused_bias_gelu: bool = False
    fused_cross_entropy: bool = False
    source_model_type: Optional[str] = None
    pad_token_id: Optional[int] = 0
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        apply_aliases(self, kwargs)
        super().__post_init__(**kwargs)
        self.check()
        check_attn_implementation(self._attn_implementation)

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raise a :class:`UsageError` naming the field, its value and what is allowed."""

        def bad(field: str, allowed: str):
            raise UsageError(f"TuringNLUConfig.{field}={getattr(self, field)!r} is invalid: {allowed}")

        check_shared_fields(self)
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            bad("type_vocab_size", "it must be an integer >= 0 (0 = no token-type embeddings)")
        if self.mlm_head_act is not None and self.mlm_head_act not in ACTIVATIONS:
            bad("mlm_head_act", f"choose None (same as hidden_act) or one of {', '.join(ACTIVATIONS)}")
        if self.norm_position not in NORM_POSITIONS:
            bad("norm_position", f"choose one of {', '.join(NORM_POSITIONS)}")
        if self.classifier_head not in CLASSIFIER_HEADS:
            bad("classifier_head", f"choose one of {', '.join(CLASSIFIER_HEADS)}")
        if self.pretraining_objective not in PRETRAINING_OBJECTIVES:
            bad("pretraining_objective", f"choose one of {', '.join(PRETRAINING_OBJECTIVES)}")
        if self.classifier_dropout is not None and not (0.0 <= float(self.classifier_dropout) < 1.0):
            bad("classifier_dropout", "a probability in [0, 1) is required")
        if not isinstance(self.position_offset, int) or not 0 <= self.position_offset < self.max_position_embeddings:
            bad("position_offset", f"it must be an integer in [0, max_position_embeddings={self.max_position_embeddings})")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            bad("pad_token_id", f"it must be None or in [0, vocab_size={self.vocab_size})")
        if self.position_offset and self.pad_token_id is None:
            bad("pad_token_id", "position_offset > 0 (RoBERTa positions) needs a pad_token_id")
        for field in ("generator_hidden_size", "generator_num_hidden_layers",
                      "generator_num_attention_heads", "generator_intermediate_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value <= 0):
                bad(field, "it must be None (derived) or a positive integer")
        if self.pretraining_objective == "electra":
            gen = self.generator_config()
            if gen.hidden_size % gen.num_attention_heads:
                bad("generator_hidden_size", f"it must be divisible by generator_num_attention_heads={gen.num_attention_heads}")

    # ------------------------------------------------------------------ derived values
    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' ``from_dict``; a ``config.json`` written before the per-head qkv layout is
        marked ``qkv_layout="blocks"`` so that loading converts its weights."""
        return super().from_dict(mark_qkv_layout(config_dict), **kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table covers (512 for BERT, 512 for RoBERTa's 514 rows)."""
        return self.max_position_embeddings - self.position_offset

    def generator_config(self) -> "TuringNLUConfig":
        """The ELECTRA generator: same vocabulary and positions, a quarter of the width by default."""
        hidden = self.generator_hidden_size or max(self.hidden_size // 4, self.head_dim)
        heads = self.generator_num_attention_heads or max(1, hidden // self.head_dim)
        kwargs = self.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "generator_hidden_size",
                    "generator_num_hidden_layers", "generator_num_attention_heads",
                    "generator_intermediate_size", "pretraining_objective"):
            kwargs.pop(key, None)
        kwargs.update(
            hidden_size=hidden,
            num_attention_heads=heads,
            num_hidden_layers=self.generator_num_hidden_layers or self.num_hidden_layers,
            intermediate_size=self.generator_intermediate_size or 4 * hidden,
            pretraining_objective="mlm",
        )
        return TuringNLUConfig(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a ``config.json``; a BERT / RoBERTa / XLM-R config is converted (``nlu.adapter_bert``)."""
        from ..layers.state_dict_adapter import config_from_pretrained

        converted = config_from_pretrained(cls, pretrained_model_name_or_path, **kwargs)
        if converted is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return (converted, {}) if kwargs.get("return_unused_kwargs") else converted

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "TuringNLUConfig":
        """A named scale (``tiny``, ``base``, ``large``, ``xl``) with optional field overrides."""
        if name not in NLU_SCALES:
            raise UsageError(f"unknown TuringNLU scale {name!r}; choose one of {', '.join(NLU_SCALES)}")
        return cls(**{**NLU_SCALES[name], **overrides})


def num_parameters(config: TuringNLUConfig, *, pooler: bool = True, mlm_head: bool = False) -> int:
    """Closed-form parameter count of :class:`TuringNLUModel` (+ the tied MLM head when asked).

    Embeddings ``(V + P + T) h + 2h``; each layer ``4h^2 + 4h`` (attention) ``+ 2hI + I + h`` (FFN)
    ``+ 4h`` (two norms); ``2h`` final norm when pre-LN; pooler ``h^2 + h``; MLM head ``h^2 + h``
    (transform) ``+ 2h`` (norm) ``+ V`` (decoder bias, weight tied to the embeddings).
    """
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    total = (v + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    total += config.num_hidden_layers * (4 * h * h + 2 * h * i + 9 * h + i)
    if config.norm_position == "pre":
        total += 2 * h
    if pooler:
        total += h * h + h
    if mlm_head:
        total += h * h + 3 * h + v
    return total
