"""TuringNLG: a pre-LN GPT decoder (GPT-2 / Megatron-LM / Turing-NLG 17B), Hugging Face native.

Read top to bottom:

    tokens -> token embedding + learned position embedding -> dropout
           -> N x TuringNLGBlock:   x = x + Attention(LN(x));   x = x + MLP(LN(x))
           -> final LN -> output projection tied to the token embedding

The residual stream is carried explicitly: each LayerNorm is called in its residual form
``norm(branch_output, residual=stream) -> (normalised(stream + branch_output), stream + branch_output)``,
which is the same arithmetic as above and lets the fused Triton kernel do the add and the norm in
one pass on CUDA (``config.fused_layernorm``).

Attention projections are fused (one ``qkv`` matmul whose output is laid out per head,
``[heads, 3, head_dim]``, so a column split for tensor parallelism gives each rank whole heads;
see :mod:`turing_models.layers.tensor_parallel`), and attention itself goes through :func:`turing_models.layers.dot_product_attention`,
so ``config._attn_implementation`` ("turing", "sdpa", "eager") picks the backend with no change
here. The KV cache is a transformers :class:`~transformers.DynamicCache`, so ``generate()`` works
(greedy, sampling, beam search, left-padded batches).

Nothing here is parallel: FSDP2 / DeepSpeed / tensor parallelism / activation checkpointing /
torch.compile are applied from outside (``turing_models.training``); the tensor-parallel plan is data
on the classes (``TuringNLGConfig.base_model_tp_plan``, ``TuringNLGForCausalLM._tp_plan``).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..layers import MLP, LayerNorm, dot_product_attention, resolve_attn_implementation
from ..layers.loss import cross_entropy
from ..layers.config import QKV_LAYOUT
from ..layers.state_dict_adapter import load_pretrained
from .configuration_turing_nlg import TuringNLGConfig

# transformers renamed the outputs' ``past_key_values`` field to ``cache`` during 5.x; support both.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


# --------------------------------------------------------------------------------------------- #
# Masks and positions (built once per forward, shared by every layer)
# --------------------------------------------------------------------------------------------- #
def build_attention_mask(
    attention_mask: Optional[torch.Tensor], q_len: int, past_len: int, device: torch.device
) -> tuple[Optional[torch.Tensor], bool]:
    """Return ``(mask, is_causal)`` for :func:`dot_product_attention`.

    ``attention_mask`` is the usual 2-D ``[batch, past_len + q_len]`` padding mask (1 = token,
    0 = padding) or ``None``. Query ``i`` sits at absolute position ``past_len + i``. With no
    padding mask nothing is materialised: prefill runs as ``is_causal`` and one-token decoding
    attends to the whole cache with no mask at all (the cheapest SDPA call on every backend).
    A 4-D mask (boolean, or additive float with 0 = keep) is passed through as given.
    """
    if attention_mask is None:
        return None, q_len > 1
    if attention_mask.dim() == 4:
        if attention_mask.dtype != torch.bool:
            attention_mask = attention_mask == 0
        return attention_mask, False
    keys = attention_mask[:, None, None, :].bool()  # [B, 1, 1, K]
    if q_len == 1:
        return keys, False
    k_len = attention_mask.shape[-1]
    q_pos = torch.arange(past_len, past_len + q_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    return keys & (k_pos <= q_pos), False


def positions_from_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding does not shift them."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp_(min=0)
    return positions[:, -q_len:]


# --------------------------------------------------------------------------------------------- #
# Blocks
# --------------------------------------------------------------------------------------------- #
class TuringNLGAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    def __init__(self, config: TuringNLGConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)  # residual output projection
        self.dense.is_residual_projection = True
        self.attention_dropout = config.attention_dropout
        self.resid_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = True,
        cache: Optional[Cache] = None,
    ) -> torch.Tensor:
        batch, q_len, _ = hidden_states.shape
        # per-head fused layout [heads, 3, head_dim]; -1 heads: a tensor-parallel rank holds fewer
        qkv = self.qkv(hidden_states).view(batch, q_len, -1, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each [B, H, T, D]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if attn_mask is not None and attn_mask.shape[-1] < k.shape[-2]:
            # a preallocated cache (StaticCache) returns more key slots than the mask covers
            attn_mask = F.pad(attn_mask, (0, k.shape[-2] - attn_mask.shape[-1]), value=False)
        out = dot_product_attention(
            q, k, v,
            implementation=self.config._attn_implementation or "sdpa",
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, q_len, -1)
        return self.resid_dropout(self.dense(out))


class TuringNLGBlock(GradientCheckpointingLayer):
    """Pre-LN block in residual form: takes and returns ``(branch_output, residual_stream)``."""

    def __init__(self, config: TuringNLGConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm)
        self.attention = TuringNLGAttention(config, layer_idx)
        self.post_attention_layernorm = LayerNorm(
            config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm
        )
        self.mlp = MLP(
            config.hidden_size, config.intermediate_size, activation=config.hidden_act,
            fused_bias_gelu=config.fused_bias_gelu,
        )
        self.mlp.fc_out.is_residual_projection = True
        self.mlp_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = True,
        cache: Optional[Cache] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:  # first block: the stream is the embeddings
            residual = hidden_states
            normed = self.input_layernorm(hidden_states)
        else:
            normed, residual = self.input_layernorm(hidden_states, residual=residual)
        attn_out = self.attention(normed, attn_mask=attn_mask, is_causal=is_causal, cache=cache)
        normed, residual = self.post_attention_layernorm(attn_out, residual=residual)
        return self.mlp_dropout(self.mlp(normed)), residual


# --------------------------------------------------------------------------------------------- #
# PreTrainedModel plumbing
# --------------------------------------------------------------------------------------------- #
class TuringNLGPreTrainedModel(PreTrainedModel):
    config_class = TuringNLGConfig
    config: TuringNLGConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TuringNLGBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    # our attention reads config._attn_implementation on every call, so switching it at run time works
    _can_set_attn_implementation_cached_value = True

    def get_correct_attn_implementation(self, requested_attention: Optional[str], is_init_check: bool = False) -> str:
        """Our attention goes through the registry of ``turing_models.layers.attention``, which decides."""
        return resolve_attn_implementation(requested_attention)

    def post_init(self) -> None:
        self.config.qkv_layout = QKV_LAYOUT  # the modules compute per head; loading converts older files
        super().post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 / Megatron init: N(0, std) everywhere, residual output projections N(0, std/sqrt(2L))."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):  # attention.dense, mlp.fc_out
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """transformers' resize; ``new_num_tokens`` is the real vocabulary, rows may be padded beyond it."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if new_num_tokens is not None:
            self.config.real_vocab_size = new_num_tokens
        return embeddings

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a TuringNLG checkpoint, or convert a GPT-2-family one (``model_type`` "gpt2") on load.

        ``pretrained_model_name_or_path`` is a folder or a Hub id, resolved with huggingface_hub as
        transformers does; :mod:`turing_models.layers.state_dict_adapter` reads it (the GPT-2 key
        map is registered by ``turing_models.nlg``). Bad checkpoints raise one
        :class:`~turing_models.errors.UsageError`.
        """
        return load_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)


def _output(cls, cache, **fields):
    fields[_CACHE_FIELD] = cache
    return cls(**fields)


# --------------------------------------------------------------------------------------------- #
# The models
# --------------------------------------------------------------------------------------------- #
class TuringNLGModel(TuringNLGPreTrainedModel):
    """The decoder stack without the output projection; returns the final-LN hidden states."""

    def __init__(self, config: TuringNLGConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.embed_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([TuringNLGBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm_f = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fused=config.fused_layernorm)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        past_key_values: Optional[Cache] = None,
        **kwargs,
    ) -> Union[BaseModelOutputWithPast, tuple]:
        if cache is None:
            cache = past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("TuringNLGModel: pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, q_len = inputs_embeds.shape[:2]

        if use_cache is None:  # a training forward keeps no cache unless asked: it would only hold memory
            use_cache = self.config.use_cache and not (self.training and torch.is_grad_enabled())
        checkpointing = len(self.layers) > 0 and self.layers[0].gradient_checkpointing
        if checkpointing and self.training and torch.is_grad_enabled():
            use_cache = False  # the recomputed forward would write the cache twice
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0

        if past_len + q_len > self.config.max_position_embeddings:
            raise ValueError(
                f"TuringNLG: sequence length {past_len + q_len} exceeds the context length "
                f"max_position_embeddings={self.config.max_position_embeddings}; shorten the input."
            )
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = positions_from_mask(attention_mask, q_len)
            else:
                position_ids = torch.arange(past_len, past_len + q_len, device=inputs_embeds.device)[None]

        hidden = self.embed_dropout(inputs_embeds + self.embed_positions(position_ids))
        attn_mask, is_causal = build_attention_mask(attention_mask, q_len, past_len, hidden.device)

        all_hidden = () if output_hidden_states else None
        residual = None
        for block in self.layers:
            if output_hidden_states:
                all_hidden += (hidden if residual is None else hidden + residual,)
            hidden, residual = block(hidden, residual, attn_mask, is_causal, cache=cache)
        hidden, _ = self.norm_f(hidden, residual=residual)
        if output_hidden_states:
            all_hidden += (hidden,)

        cache = cache if use_cache else None
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if not return_dict:
            return tuple(x for x in (hidden, cache, all_hidden) if x is not None)
        return _output(BaseModelOutputWithPast, cache, last_hidden_state=hidden, hidden_states=all_hidden)


class TuringNLGForCausalLM(TuringNLGPreTrainedModel, GenerationMixin):
    """TuringNLG with the (tied) output projection and the causal LM loss. Also ``turing_models.TuringNLG``.

    Logits have ``config.real_vocab_size`` columns: padded embedding rows are never predicted.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # tensor parallelism: the vocabulary split column-wise, logits gathered (the decoder's plan is
    # TuringNLGConfig.base_model_tp_plan)
    _tp_plan = {"lm_head": "colwise_gather_output"}
    # loss parallelism: the logits stay split on the vocabulary and the cross-entropy is computed
    # on the shards (the caller runs the loss and its backward under torch's loss_parallel())
    _loss_parallel_plan = {"lm_head": "colwise_loss_parallel"}

    def __init__(self, config: TuringNLGConfig):
        super().__init__(config)
        self.model = TuringNLGModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _head_weight(self) -> torch.Tensor:
        real = self.config.real_vocab_size
        weight = self.lm_head.weight
        return weight if real >= weight.shape[0] else weight[:real]

    def _loss_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits over the real vocabulary, logits the loss reads)``. With a padded vocabulary and
        a plain head the loss reads all the rows' logits (its softmax stops at the real ones): the
        tied weight's gradient then comes from the matmul whole, with no zero-filled copy into the
        padding rows, and the real columns returned are a view of the same tensor."""
        real = self.config.real_vocab_size
        head = self.lm_head
        if real < head.weight.shape[0] and _plain_linear(head):
            full = head(hidden)
            return full[..., :real], full
        logits = self._logits(hidden)
        return logits, logits

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the real vocabulary (the padding rows of the head dropped)."""
        real = self.config.real_vocab_size
        head = self.lm_head
        if real < head.weight.shape[0] and _plain_linear(head):
            # against the real rows of the weight: contiguous logits, no [tokens, vocab] copy
            return F.linear(hidden, head.weight[:real], None if head.bias is None else head.bias[:real])
        # through the module, which a tensor-parallel plan (or another wrapper) hooks; a head
        # that masks its padding columns itself (vocabulary-sharded logits) returns all of them
        logits = head(hidden)
        return logits if real >= logits.shape[-1] or getattr(head, "masks_padding", False) else logits[..., :real]

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        shift_labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        past_key_values: Optional[Cache] = None,
        num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
        **kwargs,
    ) -> Union[CausalLMOutputWithPast, tuple]:
        r"""
        labels: ``[batch, seq]`` token ids; the model shifts them (position t predicts t+1).
            -100 is ignored.
        shift_labels: ``[batch, seq]`` targets already aligned with the inputs (position t
            predicts ``shift_labels[t]``), as produced by packed-sequence collators. Used instead
            of ``labels``.
        logits_to_keep: keep logits for only the last N positions (0 = all); ``generate()`` uses 1.
        num_items_in_batch: when given, the loss is the sum over tokens divided by it (gradient
            accumulation across micro-batches, as transformers' Trainer passes).
        """
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            return_dict=True, past_key_values=past_key_values,
        )
        hidden = outputs.last_hidden_state

        loss = None
        logits = None
        if labels is not None or shift_labels is not None:
            if shift_labels is None:
                # shift the labels, not the hidden states or logits (no copy of either): the last
                # position has no next token and is ignored
                shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]
            targets = shift_labels.to(hidden.device)
            reduction = "mean" if num_items_in_batch is None else "sum"
            if self.config.fused_cross_entropy:
                from ..layers import linear_cross_entropy

                # the fused kernel never materialises the tokens x vocab logits: none are returned
                loss = linear_cross_entropy(
                    hidden, self._head_weight(), targets, reduction=reduction, fused=True,
                    num_valid_classes=self.config.real_vocab_size,
                )
            else:
                logits, full = self._loss_logits(hidden)
                # only the plain head's extra columns are cut here: a vocabulary-sharded head masks
                # its own padding (slicing its logits would gather them)
                num_valid = logits.shape[-1] if full is not logits else None
                loss = cross_entropy(full.reshape(-1, full.shape[-1]).float(), targets.reshape(-1),
                                     reduction=reduction, num_valid_classes=num_valid)
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch
        else:
            if isinstance(logits_to_keep, int):
                kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            else:
                kept = hidden[:, logits_to_keep]
            logits = self._logits(kept)

        return_dict = self.config.return_dict if return_dict is None else return_dict
        cache_out = getattr(outputs, _CACHE_FIELD)
        if not return_dict:
            return tuple(x for x in (loss, logits, cache_out, outputs.hidden_states) if x is not None)
        return _output(
            CausalLMOutputWithPast, cache_out, loss=loss, logits=logits, hidden_states=outputs.hidden_states
        )


def _plain_linear(module: nn.Module) -> bool:
    """A bare ``nn.Linear`` with plain tensors and no hooks (no tensor-parallel plan applied)."""
    return (type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)
            and type(module.weight.data) is torch.Tensor)


TuringNLG = TuringNLGForCausalLM

__all__ = [
    "TuringNLG",
    "TuringNLGBlock",
    "TuringNLGForCausalLM",
    "TuringNLGModel",
    "TuringNLGPreTrainedModel",
    "build_attention_mask",
]
