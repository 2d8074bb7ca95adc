"""Hugging Face integration: Auto classes, save/load round trip, sharding, pipeline, accelerate."""

from __future__ import annotations

import torch
from factories import nlg_model, read_json

import turing_models
from turing_models.nlg import TuringNLG, TuringNLGConfig, TuringNLGForCausalLM, TuringNLGModel


def test_public_names():
    assert turing_models.TuringNLG is TuringNLGForCausalLM
    assert turing_models.TuringNLGConfig is TuringNLGConfig


def test_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    model = nlg_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TuringNLGConfig)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is TuringNLGForCausalLM
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is TuringNLGModel
    assert torch.equal(base.embed_tokens.weight, model.model.embed_tokens.weight)
    assert type(AutoModelForCausalLM.from_config(TuringNLGConfig.from_name("tiny"))) is TuringNLGForCausalLM


def test_save_load_round_trip_is_exact(tmp_path):
    model = nlg_model()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt")) for f in files)
    loaded = TuringNLG.from_pretrained(tmp_path)
    ref = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, ref[key]), key
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    for key, value in model.config.to_diff_dict().items():
        assert loaded.config.to_diff_dict().get(key) == value, key
    ids = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_sharded_above_max_shard_size(tmp_path):
    model = nlg_model()
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    index = read_json(tmp_path / "model.safetensors.index.json")
    assert len(set(index["weight_map"].values())) > 1
    loaded = TuringNLG.from_pretrained(tmp_path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_device_map_and_low_memory_loading(tmp_path):
    model = nlg_model()
    model.save_pretrained(tmp_path)
    loaded = TuringNLG.from_pretrained(tmp_path, device_map="cpu", dtype=torch.float32)
    assert loaded.device.type == "cpu"
    auto = TuringNLG.from_pretrained(tmp_path, device_map="auto")
    ids = torch.randint(0, 300, (1, 5))
    with torch.no_grad():
        assert torch.equal(auto(ids).logits, model(ids).logits)


def test_pipeline_with_tokenizer_beside_the_model(nlg_folder):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(nlg_folder), device="cpu")
    out = pipe("Once upon a time", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("Once upon a time")
