"""The TuringNLU encoder family: a BERT / RoBERTa / ELECTRA-style bidirectional transformer.

Reading order: embeddings -> attention -> layer -> TuringNLUModel (with unpadded execution) ->
the task heads (masked LM, sequence classification, question answering, token classification,
pretraining with MLM or ELECTRA replaced-token detection).

Unpadded execution (ModernBERT style): when the attention mask has padding and
``config.unpad_inputs`` is on, the model gathers the real tokens of the batch once, before the
embeddings, into one packed ``[total_tokens, hidden]`` tensor described by int32 ``cu_seqlens``.
Every norm, MLP and projection then runs on real tokens only, attention runs per sequence through
:func:`turing_models.layers.varlen_attention`, and the output is scattered back to
``[batch, seq, hidden]`` at the end (padding positions are zeros). Outputs and gradients equal the
padded path's at the real positions.

Checkpoints of BERT, RoBERTa and XLM-R (folders or Hub ids) load into every class here through
``from_pretrained``: the key map of :mod:`turing_models.nlu.adapter_bert` converts their config and
weights on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from ..layers import LayerNorm, MLP, activation_fn, dot_product_attention, linear_cross_entropy, varlen_attention
from ..layers.attention import resolve_attn_implementation
from ..layers.config import QKV_LAYOUT
from ..layers.state_dict_adapter import load_pretrained
from .configuration_turing_nlu import TuringNLUConfig


# ----------------------------------------------------------------------------- packing helpers
@dataclass
class PackedBatch:
    """Where the real tokens of a padded ``[batch, seq]`` batch sit once packed."""

    indices: torch.Tensor  # [total] flat positions of the real tokens in batch * seq
    cu_seqlens: torch.Tensor  # [batch + 1] int32 cumulative sequence lengths
    max_seqlen: int
    batch_size: int
    seq_len: int
    bounds: list[int]  # cu_seqlens as Python ints, read once per forward

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> "PackedBatch":
        mask = attention_mask.bool()
        seqlens = mask.sum(dim=1, dtype=torch.int32)
        indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
        cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
        return cls(indices, cu_seqlens, int(seqlens.max()), mask.shape[0], mask.shape[1], cu_seqlens.tolist())

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, seq, ...]`` -> ``[total, ...]``."""
        return x.reshape(self.batch_size * self.seq_len, *x.shape[2:]).index_select(0, self.indices)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``[total, ...]`` -> ``[batch, seq, ...]`` with zeros at padding."""
        out = x.new_zeros(self.batch_size * self.seq_len, *x.shape[1:])
        out.index_copy_(0, self.indices, x)
        return out.view(self.batch_size, self.seq_len, *x.shape[1:])


def position_ids_for(config: TuringNLUConfig, input_ids: Optional[torch.Tensor], shape, device) -> torch.Tensor:
    """BERT: ``0..T-1``. RoBERTa / XLM-R (``position_offset > 0``): count only non-padding tokens
    from ``position_offset``; padding tokens take ``position_offset - 1`` (the padding row)."""
    batch, seq = shape
    if config.position_offset == 0:
        return torch.arange(seq, device=device).expand(batch, seq)
    if input_ids is None:
        return torch.arange(config.position_offset, seq + config.position_offset, device=device).expand(batch, seq)
    real = input_ids.ne(config.pad_token_id).long()
    return torch.cumsum(real, dim=1) * real + (config.position_offset - 1)


# ----------------------------------------------------------------------------- modules
class TuringNLUEmbeddings(nn.Module):
    """Word + position (+ token type) embeddings, then LayerNorm and dropout (BERT)."""

    def __init__(self, config: TuringNLUConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        pos_pad = config.pad_token_id if config.position_offset else None
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size, padding_idx=pos_pad)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids, position_ids, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))


class TuringNLUAttention(nn.Module):
    """Bidirectional multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, config: TuringNLUConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_dropout
        self.config = config

    def forward(self, x: torch.Tensor, attn_mask=None, packed: Optional[PackedBatch] = None) -> torch.Tensor:
        impl = _attention_backend(self.config)
        dropout_p = self.dropout_p if self.training else 0.0
        # per-head fused layout [heads, 3, head_dim]; -1 heads: a tensor-parallel rank holds fewer
        qkv = self.qkv(x).unflatten(-1, (-1, 3, self.head_dim))
        if packed is not None and impl != "turing" and not torch.is_grad_enabled() and dropout_p == 0.0:
            o = _packed_attention_inference(qkv, packed, impl).flatten(-2)
        elif packed is not None:  # x: [total, hidden]
            q, k, v = qkv.unbind(dim=-2)  # [total, H, D] each
            o = varlen_attention(q, k, v, packed.cu_seqlens, packed.max_seqlen, implementation=impl, dropout_p=dropout_p)
            o = o.flatten(-2)
        else:  # x: [batch, seq, hidden]
            q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # [B, H, T, D] each
            o = dot_product_attention(q, k, v, implementation=impl, attn_mask=attn_mask, dropout_p=dropout_p)
            o = o.transpose(1, 2).flatten(-2)
        return self.out(o)


def _packed_attention_inference(qkv: torch.Tensor, packed: PackedBatch, impl: str) -> torch.Tensor:
    """Inference-only packed attention for the non-CUDA-kernel backends: one dense call per
    sequence, each output written over that sequence's query slice (no longer needed once its
    attention is computed). Same result as ``varlen_attention``, without allocating and filling a
    new ``[total, hidden]`` buffer per layer, which is measurable on the CPU. ``qkv``:
    ``[total, H, 3, D]`` (the per-head fused layout); returns ``[total, H, D]`` (a view into ``qkv``)."""
    for start, end in zip(packed.bounds[:-1], packed.bounds[1:]):
        q, k, v = qkv[start:end].permute(2, 1, 0, 3).unsqueeze(1)  # [1, H, L, D] each
        qkv[start:end, :, 0] = dot_product_attention(q, k, v, implementation=impl)[0].transpose(0, 1)
    return qkv[:, :, 0]


def _attention_backend(config: TuringNLUConfig) -> str:
    return getattr(config, "_attn_implementation", None) or "sdpa"


class TuringNLULayer(nn.Module):
    """One encoder layer. Post-LN (BERT): ``x = norm(x + drop(sublayer(x)))``; pre-LN:
    ``x = x + drop(sublayer(norm(x)))``."""

    def __init__(self, config: TuringNLUConfig):
        super().__init__()
        self.pre_ln = config.norm_position == "pre"
        self.attention = TuringNLUAttention(config)
        self.attention_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                       fused_bias_gelu=config.fused_bias_gelu)
        self.mlp_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, attn_mask=None, packed: Optional[PackedBatch] = None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.dropout(self.attention(self.attention_norm(x), attn_mask, packed))
            return x + self.dropout(self.mlp(self.mlp_norm(x)))
        x = self.attention_norm(self.dropout(self.attention(x, attn_mask, packed)), residual=x)[0]
        return self.mlp_norm(self.dropout(self.mlp(x)), residual=x)[0]


class TuringNLUPooler(nn.Module):
    """BERT's pooler: ``tanh(dense(h[:, 0]))``."""

    def __init__(self, config: TuringNLUConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class TuringNLUMLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder (weight tied to the word embeddings)."""

    def __init__(self, config: TuringNLUConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation_fn(config.mlm_head_act or config.hidden_act)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


# ----------------------------------------------------------------------------- base classes
class TuringNLUPreTrainedModel(PreTrainedModel):
    config_class = TuringNLUConfig
    config: TuringNLUConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["TuringNLULayer"]

    def get_correct_attn_implementation(self, requested_attention: Optional[str], is_init_check: bool = False) -> str:
        """Our attention goes through the registry of ``turing_models.layers.attention``, which decides."""
        return resolve_attn_implementation(requested_attention)

    def post_init(self) -> None:
        self.config.qkv_layout = QKV_LAYOUT  # the modules compute per head; loading converts older files
        super().post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a TuringNLU folder / Hub id, or convert a BERT, RoBERTa or XLM-R one on load
        (:mod:`turing_models.layers.state_dict_adapter`; the key map is registered by
        ``turing_models.nlu``). Bad checkpoints raise one :class:`~turing_models.errors.UsageError`."""
        return load_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)


class TuringNLUModel(TuringNLUPreTrainedModel):
    """The bare encoder: embeddings, ``num_hidden_layers`` layers, an optional pooler."""

    def __init__(self, config: TuringNLUConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = TuringNLUEmbeddings(config)
        self.layers = nn.ModuleList(TuringNLULayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = (
            LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm)
            if config.norm_position == "pre" else None
        )
        self.pooler = TuringNLUPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _check_inputs(self, input_ids, attention_mask, token_type_ids, seq_len) -> None:
        cfg = self.config
        if seq_len > cfg.max_sequence_length:
            raise ValueError(
                f"input has {seq_len} tokens per row but this model has {cfg.max_sequence_length} positions "
                f"(max_position_embeddings={cfg.max_position_embeddings}, position_offset={cfg.position_offset}); "
                f"truncate the inputs, e.g. tokenizer(..., truncation=True, max_length={cfg.max_sequence_length})."
            )
        if input_ids is not None and input_ids.numel() and (int(input_ids.max()) >= cfg.vocab_size or int(input_ids.min()) < 0):
            raise ValueError(
                f"input_ids must be in [0, vocab_size={cfg.vocab_size}) but range over "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]; use the tokenizer saved with this model."
            )
        if token_type_ids is not None and token_type_ids.numel():
            top = int(token_type_ids.max())
            if top >= max(cfg.type_vocab_size, 1):
                raise ValueError(
                    f"token_type_ids go up to {top} but this model has type_vocab_size={cfg.type_vocab_size}; "
                    "drop token_type_ids (RoBERTa / XLM-R style models use a single segment)."
                )
        if attention_mask is not None:
            empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten()
            if empty.numel():
                raise ValueError(
                    f"attention_mask rows {empty.tolist()} have no real tokens; every sequence needs at least "
                    "one token (drop empty rows before calling the model)."
                )

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds.")
        if output_attentions:
            raise ValueError("output_attentions is not supported by TuringNLU (attention runs fused); "
                             "use output_hidden_states or a transformers BertModel exported with export_to_hf.")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        self._check_inputs(input_ids, attention_mask, token_type_ids, shape[1])
        if position_ids is None:
            position_ids = position_ids_for(self.config, input_ids, shape, device)
        elif position_ids.shape != shape:
            position_ids = position_ids.expand(shape)

        attn_mask, packed = None, None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            if self.config.unpad_inputs:
                packed = PackedBatch.from_mask(attention_mask)
            else:
                attn_mask = attention_mask.bool()[:, None, None, :]

        if packed is not None:  # drop padding once, before any compute
            pick = lambda t: None if t is None else packed.pack(t.expand(shape) if t.dim() == 2 else t)  # noqa: E731
            x = self.embeddings(pick(input_ids), pick(position_ids), pick(token_type_ids), pick(inputs_embeds))
        else:
            x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)

        restore = packed.unpack if packed is not None else (lambda t: t)
        all_hidden = [restore(x)] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, attn_mask, packed)
            if output_hidden_states:
                all_hidden.append(restore(x))
        if self.final_norm is not None:
            x = self.final_norm(x)
            if output_hidden_states:
                all_hidden[-1] = restore(x)
        sequence_output = restore(x)
        pooled = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )


# ----------------------------------------------------------------------------- heads
class TuringNLUForMaskedLM(TuringNLUPreTrainedModel):
    """Masked language modelling (BERT / RoBERTa MLM head, decoder tied to the embeddings)."""

    _tied_weights_keys = {"lm_head.decoder.weight": "encoder.embeddings.word_embeddings.weight"}
    # tensor parallelism: the vocabulary projection split column-wise, logits gathered
    _tp_plan = {"lm_head.decoder": "colwise_gather_output"}

    def __init__(self, config: TuringNLUConfig):
        super().__init__(config)
        self.encoder = TuringNLUModel(config, add_pooling_layer=False)
        self.lm_head = TuringNLUMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs) -> MaskedLMOutput:
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states=output_hidden_states, output_attentions=kwargs.get("output_attentions"))
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1).to(logits.device))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class TuringNLUForSequenceClassification(TuringNLUPreTrainedModel):
    """Sentence / sentence-pair classification, regression when ``num_labels == 1``.

    ``config.classifier_head == "pooler"``: BERT's ``classifier(dropout(pooler))``;
    ``"dense"``: RoBERTa's ``out_proj(dropout(tanh(dense(dropout(h[:, 0])))))``.
    """

    def __init__(self, config: TuringNLUConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        use_pooler = config.classifier_head == "pooler"
        self.encoder = TuringNLUModel(config, add_pooling_layer=use_pooler)
        drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        self.dropout = nn.Dropout(drop)
        if use_pooler:
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        else:
            self.classifier = nn.ModuleDict(dict(
                dense=nn.Linear(config.hidden_size, config.hidden_size),
                out_proj=nn.Linear(config.hidden_size, config.num_labels),
            ))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states=output_hidden_states, output_attentions=kwargs.get("output_attentions"))
        if self.config.classifier_head == "pooler":
            logits = self.classifier(self.dropout(out.pooler_output))
        else:
            x = torch.tanh(self.classifier["dense"](self.dropout(out.last_hidden_state[:, 0])))
            logits = self.classifier["out_proj"](self.dropout(x))
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(self.config, logits, labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def sequence_classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' convention: MSE for one label, CE for integer labels, BCE for multi-label."""
    num_labels = logits.shape[-1]
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype)) if num_labels == 1 else F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class TuringNLUForQuestionAnswering(TuringNLUPreTrainedModel):
    """Extractive QA: start / end logits per token (SQuAD style)."""

    def __init__(self, config: TuringNLUConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = TuringNLUModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_hidden_states=None,
                return_dict=None, **kwargs) -> QuestionAnsweringModelOutput:
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states=output_hidden_states, output_attentions=kwargs.get("output_attentions"))
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence are ignored (transformers' convention). Unlike
            # transformers, padding never competes in the softmax: padded positions are masked out
            # of the loss, so the loss does not depend on what the model computes at padding.
            ignored = start_logits.shape[1]
            start = start_positions.view(-1).clamp(0, ignored).to(start_logits.device)
            end = end_positions.view(-1).clamp(0, ignored).to(end_logits.device)
            s_logits, e_logits = start_logits, end_logits
            if attention_mask is not None:
                pad = ~attention_mask.bool().to(start_logits.device)
                s_logits = start_logits.masked_fill(pad, torch.finfo(start_logits.dtype).min)
                e_logits = end_logits.masked_fill(pad, torch.finfo(end_logits.dtype).min)
            loss = (F.cross_entropy(s_logits, start, ignore_index=ignored)
                    + F.cross_entropy(e_logits, end, ignore_index=ignored)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            hidden_states=out.hidden_states)


class TuringNLUForTokenClassification(TuringNLUPreTrainedModel):
    """Per-token labels (NER, POS); labels of -100 are ignored."""

    def __init__(self, config: TuringNLUConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = TuringNLUModel(config, add_pooling_layer=False)
        drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states=output_hidden_states, output_attentions=kwargs.get("output_attentions"))
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


# ----------------------------------------------------------------------------- pretraining
@dataclass
class TuringNLUForPreTrainingOutput(ModelOutput):
    """``loss`` is the training objective. With ``"mlm"`` it is the masked-LM loss and
    ``mlm_logits`` holds the logits of the masked positions only (``[num_masked, vocab]``). With
    ``"electra"`` it is ``mlm_loss + rtd_loss_weight * rtd_loss``: the generator's masked-LM loss
    plus the discriminator's replaced-token-detection loss over every real token;
    ``rtd_logits`` is ``[batch, seq]`` and ``rtd_labels`` marks the replaced tokens."""

    loss: Optional[torch.Tensor] = None
    mlm_loss: Optional[torch.Tensor] = None
    rtd_loss: Optional[torch.Tensor] = None
    mlm_logits: Optional[torch.Tensor] = None
    rtd_logits: Optional[torch.Tensor] = None
    rtd_labels: Optional[torch.Tensor] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None


class TuringNLUForPreTraining(TuringNLUPreTrainedModel):
    """Self-supervised pretraining, ``config.pretraining_objective``:

    * ``"mlm"`` (default): BERT / RoBERTa masked LM; the vocabulary projection runs on the masked
      positions only (sparse prediction, optionally the fused cross-entropy kernel).
    * ``"electra"``: a small generator (``config.generator_config()``) fills the masked positions by
      sampling from its MLM distribution; the encoder (discriminator) predicts for each real token
      whether it was replaced (ELECTRA / COCO-LM / T-NLRv5 family). Fine-tune the discriminator:
      ``save_pretrained`` of this model loads into every head class (the ``encoder.`` weights).

    Inputs are those of an MLM collator: ``input_ids`` with masks applied and ``labels`` holding the
    original token at masked positions and -100 elsewhere.
    """

    def __init__(self, config: TuringNLUConfig):
        super().__init__(config)
        self.encoder = TuringNLUModel(config, add_pooling_layer=False)
        if config.pretraining_objective == "mlm":
            self._tied_weights_keys = {"lm_head.decoder.weight": "encoder.embeddings.word_embeddings.weight"}
            self.lm_head = TuringNLUMLMHead(config)
        else:
            self.generator = TuringNLUForMaskedLM(config.generator_config())
            self.discriminator_head = nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size),
                _Activation(config.hidden_act),
                nn.Linear(config.hidden_size, 1),
            )
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder if self.config.pretraining_objective == "mlm" else None

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, output_hidden_states=None, return_dict=None, **kwargs) -> TuringNLUForPreTrainingOutput:
        if input_ids is None:
            raise ValueError("TuringNLUForPreTraining needs input_ids (the masked token ids).")
        if self.config.pretraining_objective == "mlm":
            out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids,
                               output_hidden_states=output_hidden_states)
            if labels is None:
                logits = self.lm_head(out.last_hidden_state)
                return TuringNLUForPreTrainingOutput(mlm_logits=logits, hidden_states=out.hidden_states)
            masked = labels.ne(-100)
            hidden = self.lm_head.transform(out.last_hidden_state[masked])
            loss = linear_cross_entropy(hidden, self.lm_head.decoder.weight, labels[masked],
                                        bias=self.lm_head.decoder.bias, fused=self.config.fused_cross_entropy)
            mlm_logits = None if self.training else self.lm_head.decoder(hidden)
            return TuringNLUForPreTrainingOutput(loss=loss, mlm_loss=loss, mlm_logits=mlm_logits,
                                                 hidden_states=out.hidden_states)

        if labels is None:
            raise ValueError("the electra objective needs labels (original ids at masked positions, -100 elsewhere).")
        gen = self.generator(input_ids, attention_mask, token_type_ids, position_ids, labels=labels)
        masked = labels.ne(-100)
        with torch.no_grad():  # sample replacements from the generator (no gradient through sampling)
            probs = torch.softmax(gen.logits[masked].float(), dim=-1)
            sampled = torch.multinomial(probs, 1).squeeze(-1) if probs.numel() else labels[masked]
        corrupted = input_ids.clone()
        corrupted[masked] = sampled
        original = torch.where(masked, labels, input_ids)
        rtd_labels = corrupted.ne(original).float()
        out = self.encoder(corrupted, attention_mask, token_type_ids, position_ids,
                           output_hidden_states=output_hidden_states)
        rtd_logits = self.discriminator_head(out.last_hidden_state).squeeze(-1)
        real = attention_mask.bool() if attention_mask is not None else torch.ones_like(rtd_labels, dtype=torch.bool)
        rtd_loss = F.binary_cross_entropy_with_logits(rtd_logits[real].float(), rtd_labels[real])
        loss = gen.loss + self.config.rtd_loss_weight * rtd_loss
        return TuringNLUForPreTrainingOutput(loss=loss, mlm_loss=gen.loss, rtd_loss=rtd_loss,
                                             rtd_logits=rtd_logits, rtd_labels=rtd_labels,
                                             hidden_states=out.hidden_states)


class _Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.fn = activation_fn(name)

    def forward(self, x):
        return self.fn(x)


__all__ = [
    "TuringNLUPreTrainedModel",
    "TuringNLUModel",
    "TuringNLUForMaskedLM",
    "TuringNLUForSequenceClassification",
    "TuringNLUForQuestionAnswering",
    "TuringNLUForTokenClassification",
    "TuringNLUForPreTraining",
    "TuringNLUForPreTrainingOutput",
    "PackedBatch",
]
