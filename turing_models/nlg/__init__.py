"""The TuringNLG decoder family (GPT-style, up to Turing-NLG 17B).

Importing this package registers ``turing_nlg`` with transformers' ``AutoConfig``, ``AutoModel``
and ``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(folder)`` and
``pipeline("text-generation", model=folder)`` work on TuringNLG checkpoints.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_turing_nlg import NLG_SCALES, TuringNLGConfig, nlg_num_parameters, pad_vocab_size
from .modeling_turing_nlg import (
    TuringNLG,
    TuringNLGForCausalLM,
    TuringNLGModel,
    TuringNLGPreTrainedModel,
)

from . import adapter_gpt2  # noqa: E402  (registers the GPT-2 key map for from_pretrained)

AutoConfig.register(TuringNLGConfig.model_type, TuringNLGConfig, exist_ok=True)
AutoModel.register(TuringNLGConfig, TuringNLGModel, exist_ok=True)
AutoModelForCausalLM.register(TuringNLGConfig, TuringNLGForCausalLM, exist_ok=True)

__all__ = [
    "NLG_SCALES",
    "TuringNLG",
    "TuringNLGConfig",
    "TuringNLGForCausalLM",
    "TuringNLGModel",
    "TuringNLGPreTrainedModel",
    "nlg_num_parameters",
    "pad_vocab_size",
]
