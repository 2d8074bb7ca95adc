"""State-dict adapters between public checkpoint formats and the Turing classes."""

from .gpt2 import (
    export_gpt2,
    gpt2_config_to_nlg,
    gpt2_to_nlg_state_dict,
    nlg_config_to_gpt2,
    nlg_to_gpt2_state_dict,
)

__all__ = [
    "export_gpt2",
    "gpt2_config_to_nlg",
    "gpt2_to_nlg_state_dict",
    "nlg_config_to_gpt2",
    "nlg_to_gpt2_state_dict",
]
