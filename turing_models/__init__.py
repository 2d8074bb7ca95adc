"""turing-models: Turing-style NLG decoders and NLU encoders, Hugging Face native."""

__version__ = "0.1.0"
