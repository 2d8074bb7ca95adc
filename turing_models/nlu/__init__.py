"""TuringNLU: the BERT / RoBERTa / ELECTRA-style encoder family.

Importing this package registers ``turing_nlu`` with transformers' Auto classes, so
``AutoModel``, ``AutoModelForMaskedLM``, ``AutoModelForSequenceClassification``,
``AutoModelForQuestionAnswering``, ``AutoModelForTokenClassification`` and ``pipeline(...)`` load
TuringNLU folders without ``trust_remote_code``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_turing_nlu import NLU_SCALES, TuringNLUConfig, num_parameters
from .modeling_turing_nlu import (
    PackedBatch,
    TuringNLUForMaskedLM,
    TuringNLUForPreTraining,
    TuringNLUForPreTrainingOutput,
    TuringNLUForQuestionAnswering,
    TuringNLUForSequenceClassification,
    TuringNLUForTokenClassification,
    TuringNLUModel,
    TuringNLUPreTrainedModel,
)

from . import adapter_bert  # noqa: E402  (registers the BERT / RoBERTa / XLM-R key map for from_pretrained)

AutoConfig.register("turing_nlu", TuringNLUConfig, exist_ok=True)
for _auto, _cls in (
    (AutoModel, TuringNLUModel),
    (AutoModelForMaskedLM, TuringNLUForMaskedLM),
    (AutoModelForPreTraining, TuringNLUForPreTraining),
    (AutoModelForSequenceClassification, TuringNLUForSequenceClassification),
    (AutoModelForQuestionAnswering, TuringNLUForQuestionAnswering),
    (AutoModelForTokenClassification, TuringNLUForTokenClassification),
):
    _auto.register(TuringNLUConfig, _cls, exist_ok=True)

__all__ = [
    "NLU_SCALES",
    "PackedBatch",
    "TuringNLUConfig",
    "TuringNLUForMaskedLM",
    "TuringNLUForPreTraining",
    "TuringNLUForPreTrainingOutput",
    "TuringNLUForQuestionAnswering",
    "TuringNLUForSequenceClassification",
    "TuringNLUForTokenClassification",
    "TuringNLUModel",
    "TuringNLUPreTrainedModel",
    "num_parameters",
]
