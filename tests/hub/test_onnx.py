"""ONNX export: ONNX Runtime matches PyTorch within 1e-4 (fp32); TuringNLG decodes with its KV cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from turing_models.convert.onnx import OnnxCausalLM, example_inputs, export_onnx, session

pytest.importorskip("onnxruntime")


def test_nlg_with_cache_matches_pytorch_and_generate(nlg_dir, tmp_path, run_cli):
    from turing_models.nlg import TuringNLGForCausalLM

    code, out, err, report = run_cli(["onnx", nlg_dir, tmp_path / "onnx"])
    assert code == 0, err
    assert report["kind"] == "causal-lm" and report["max_abs_diff"] < 1e-4
    assert "ONNX Runtime vs PyTorch max |difference|" in out
    spec = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert spec["inputs"][:3] == ["input_ids", "attention_mask", "past_key_values.0.key"]
    assert spec["outputs"][:2] == ["logits", "present.0.key"] and spec["num_layers"] == 2
    assert (tmp_path / "onnx" / "tokenizer.json").is_file() and (tmp_path / "onnx" / "config.json").is_file()

    model = TuringNLGForCausalLM.from_pretrained(nlg_dir).eval()
    lm = OnnxCausalLM(tmp_path / "onnx")
    # one step on a 4-token cache: logits and the extended cache match PyTorch
    feeds = example_inputs(model, batch=2, seq=1, past=4, seed=5)
    cache = {k: v.numpy() for k, v in feeds.items() if k.startswith("past")}
    logits, present = lm.step(feeds["input_ids"].numpy(), feeds["attention_mask"].numpy(), cache)
    from transformers.cache_utils import DynamicCache

    ref_cache = DynamicCache(config=model.config)
    for i in range(2):
        ref_cache.update(feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"], i)
    with torch.no_grad():
        ref = model(input_ids=feeds["input_ids"], attention_mask=feeds["attention_mask"], cache=ref_cache)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=0)
    assert present["past_key_values.1.value"].shape == (2, 4, 5, 8)
    np.testing.assert_allclose(present["past_key_values.1.value"], ref_cache.layers[1].values.numpy(), atol=1e-5)

    # greedy decoding with the cache reproduces model.generate, left padding included
    ids = torch.tensor([[50256, 50256, 464, 2068, 7586], [1212, 318, 257, 1332, 13]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                  pad_token_id=50256)
    got = lm.generate(ids.numpy(), mask.numpy(), max_new_tokens=8)
    np.testing.assert_array_equal(got, expected.numpy())


@pytest.mark.parametrize("head, outputs", [
    ("mlm", ["logits"]),
    ("cls", ["logits"]),
    ("qa", ["start_logits", "end_logits"]),
    ("tok", ["logits"]),
    ("base", ["last_hidden_state", "pooler_output"]),
])
def test_nlu_heads_match_pytorch(head, outputs, nlu_dirs, tmp_path):
    from turing_models.convert.onnx import load_turing_model

    report = export_onnx(nlu_dirs[head], tmp_path / head)
    assert report["max_abs_diff"] < 1e-4
    spec = json.loads((tmp_path / head / "onnx.json").read_text())
    assert spec["outputs"] == outputs
    assert spec["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]

    # a batch the export never saw: other lengths, right padding, two segments
    model = load_turing_model(nlu_dirs[head]).eval()
    ids = torch.tensor([[2, 50, 60, 70, 3, 80, 90, 3, 0, 0, 0], [2, 11, 12, 13, 14, 3, 15, 16, 17, 18, 3]])
    mask = (ids != 0).long()
    types = torch.tensor([[0] * 5 + [1] * 6, [0] * 6 + [1] * 5])
    got = session(tmp_path / head).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                              "token_type_ids": types.numpy()})
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=types)  # unpadded execution
    real = mask.bool().numpy()
    for name, value in zip(outputs, got):
        expected = getattr(ref, name).numpy()
        if expected.ndim >= 2 and expected.shape[:2] == ids.shape:
            value, expected = value[real], expected[real]  # padding positions are not outputs
        np.testing.assert_allclose(value, expected, atol=1e-4, rtol=0)


def test_failed_export_check_writes_nothing(nlu_dirs, tmp_path, monkeypatch):
    import turing_models.convert.onnx as onnx_mod

    monkeypatch.setattr(onnx_mod, "max_abs_difference", lambda *a, **k: 0.1)
    with pytest.raises(onnx_mod.OnnxMismatchError, match="differ from PyTorch's by 0.1"):
        export_onnx(nlu_dirs["cls"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
