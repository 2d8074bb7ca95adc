"""turing-models: Turing-style NLG decoders and NLU encoders, Hugging Face native.

Importing the package registers both families with transformers' Auto classes
(``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM``, ``AutoModelForMaskedLM``,
``AutoModelForSequenceClassification``, ``AutoModelForQuestionAnswering``,
``AutoModelForTokenClassification``) and, where Triton is installed, the "turing" attention
kernel with transformers' ``AttentionInterface``; so ``AutoModel*.from_pretrained(folder)`` and
``pipeline(...)`` work on our checkpoints without ``trust_remote_code``.
"""

__version__ = "0.1.0"

from . import zoo
from .nlg import (
    NLG_SCALES,
    TuringNLG,
    TuringNLGConfig,
    TuringNLGForCausalLM,
    TuringNLGModel,
)
from .nlu import (
    NLU_SCALES,
    TuringNLUConfig,
    TuringNLUForMaskedLM,
    TuringNLUForPreTraining,
    TuringNLUForQuestionAnswering,
    TuringNLUForSequenceClassification,
    TuringNLUForTokenClassification,
    TuringNLUModel,
)

from .layers import register_with_transformers as _register_turing_attention

_register_turing_attention()  # "turing" in transformers' AttentionInterface (no Triton import)

__all__ = [
    "NLG_SCALES",
    "NLU_SCALES",
    "TuringNLG",
    "TuringNLGConfig",
    "TuringNLGForCausalLM",
    "TuringNLGModel",
    "TuringNLUConfig",
    "TuringNLUForMaskedLM",
    "TuringNLUForPreTraining",
    "TuringNLUForQuestionAnswering",
    "TuringNLUForSequenceClassification",
    "TuringNLUForTokenClassification",
    "TuringNLUModel",
    "zoo",
]
