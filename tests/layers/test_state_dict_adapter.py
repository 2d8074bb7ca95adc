"""The one loading path of both families: config read once, headers checked, nothing unpickled,
damaged files refused in one line, foreign formats through their registered adapters."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PretrainedConfig

import turing_models.layers.state_dict_adapter as loading
from turing_models.errors import UsageError
from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM, TuringNLGModel
from turing_models.nlu import TuringNLUConfig, TuringNLUForMaskedLM, TuringNLUModel


def _nlg(folder):
    config = TuringNLGConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             max_position_embeddings=16, bos_token_id=None, eos_token_id=None)
    TuringNLGForCausalLM(config).save_pretrained(folder)
    return folder


def _nlu(folder):
    config = TuringNLUConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=48, max_position_embeddings=16)
    TuringNLUForMaskedLM(config).save_pretrained(folder)
    return folder


def _gpt2(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64, n_positions=16)).save_pretrained(folder)
    return folder


def _bert(folder):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=48, max_position_embeddings=16)).save_pretrained(folder)
    return folder


FAMILIES = {
    "nlg": (_nlg, TuringNLGForCausalLM, AutoModelForCausalLM),
    "nlu": (_nlu, TuringNLUForMaskedLM, AutoModelForMaskedLM),
    "gpt2": (_gpt2, TuringNLGForCausalLM, None),
    "bert": (_bert, TuringNLUForMaskedLM, None),
}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_truncated_safetensors_is_one_usage_error(kind, tmp_path):
    save, cls, auto = FAMILIES[kind]
    folder = save(tmp_path / kind)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for loader in filter(None, (cls, auto)):
        with pytest.raises(UsageError) as info:
            loader.from_pretrained(folder)
        assert "damaged or truncated" in _one_line(info.value)


class _Payload:
    """Runs code when unpickled: what a hostile pytorch_model.bin carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_malicious_pytorch_model_bin_is_refused_and_never_runs(kind, tmp_path):
    save, cls, auto = FAMILIES[kind]
    folder = save(tmp_path / kind)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"payload": _Payload(marker), "weight": torch.zeros(2)}, folder / "pytorch_model.bin")
    for loader in filter(None, (cls, auto)):
        with pytest.raises(UsageError) as info:
            loader.from_pretrained(folder)
        assert "never unpickled" in _one_line(info.value)
    assert not marker.exists()


def test_config_json_is_read_once(tmp_path, monkeypatch):
    folder = _nlg(tmp_path / "nlg")
    reads = []
    original = loading.read_config
    monkeypatch.setattr(loading, "read_config", lambda path: reads.append(path) or original(path))
    monkeypatch.setattr(PretrainedConfig, "_dict_from_json_file",
                        classmethod(lambda cls, f: pytest.fail(f"transformers read {f} again")))
    model = TuringNLGForCausalLM.from_pretrained(folder, hidden_dropout=0.0)
    assert len(reads) == 1 and model.config.hidden_dropout == 0.0


def test_foreign_formats_come_from_registered_adapters(tmp_path):
    assert loading.foreign_types("turing_nlg") == ["gpt2"]
    assert loading.foreign_types("turing_nlu") == ["bert", "roberta", "xlm-roberta"]
    folder = _gpt2(tmp_path / "gpt2")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "t5"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"model_type='t5'.*converts 'gpt2'"):
        TuringNLGForCausalLM.from_pretrained(folder)


def test_converted_base_model_keeps_only_its_tensors(tmp_path):
    """A GPT-2 LM checkpoint into the bare decoder, a BERT MLM checkpoint into the bare encoder:
    the heads are dropped, the rest is loaded (nothing left on the meta device)."""
    decoder = TuringNLGModel.from_pretrained(_gpt2(tmp_path / "gpt2"))
    encoder = TuringNLUModel.from_pretrained(_bert(tmp_path / "bert"))
    for model in (decoder, encoder):
        assert not any(p.is_meta for p in model.parameters())
    assert encoder.pooler is not None  # not in an MLM checkpoint: freshly initialised


@pytest.mark.parametrize("kind", ["nlg", "nlu"])
def test_checkpoint_written_before_the_per_head_layout_is_converted_on_load(kind, tmp_path):
    """An older folder: [q | k | v] rows and no qkv_layout in config.json. It loads with the same
    outputs, directly and through the Auto classes, and is saved back in the per-head layout."""
    from safetensors.torch import load_file, save_file

    from turing_models.layers.tensor_parallel import deinterleave_qkv

    save, cls, auto = FAMILIES[kind]
    folder = save(tmp_path / "new")
    model = cls.from_pretrained(folder).eval()
    state = load_file(folder / "model.safetensors")
    heads = model.config.num_attention_heads
    old = {k: deinterleave_qkv(v, heads) if ".attention.qkv." in k else v for k, v in state.items()}
    save_file(old, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("qkv_layout") == "per_head"
    (folder / "config.json").write_text(json.dumps(config))
    ids = torch.randint(3, 64, (2, 6))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        for loader in (cls, auto):
            loaded = loader.from_pretrained(folder).eval()
            assert loaded.config.qkv_layout == "per_head"
            torch.testing.assert_close(loaded(input_ids=ids).logits, expected)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["qkv_layout"] == "per_head"


def test_tensor_parallel_loading_of_a_foreign_checkpoint_says_convert_first(tmp_path):
    with pytest.raises(UsageError, match="tp_plan applies to Turing checkpoints.*to-turing"):
        TuringNLGForCausalLM.from_pretrained(_gpt2(tmp_path / "gpt2"), tp_plan="auto")
