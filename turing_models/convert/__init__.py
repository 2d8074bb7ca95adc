"""Format conversions outside the model families: ONNX export and training-checkpoint consolidation.

The Hugging Face key maps live beside their families: ``turing_models.nlg.adapter_gpt2``
(GPT-2 <-> TuringNLG) and ``turing_models.nlu.adapter_bert`` (BERT / RoBERTa / XLM-R <-> TuringNLU).
"""
