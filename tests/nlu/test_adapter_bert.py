"""Parity with transformers' BERT / RoBERTa / XLM-R: converted on load, 1e-5 in fp32."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from turing_models.nlu.adapter_bert import export_to_hf
from turing_models.nlu import (
    TuringNLUForMaskedLM,
    TuringNLUForQuestionAnswering,
    TuringNLUForSequenceClassification,
    TuringNLUForTokenClassification,
    TuringNLUModel,
)

from factories import make_batch, make_hf

OURS = {
    "Model": TuringNLUModel,
    "ForMaskedLM": TuringNLUForMaskedLM,
    "ForQuestionAnswering": TuringNLUForQuestionAnswering,
    "ForSequenceClassification": TuringNLUForSequenceClassification,
    "ForTokenClassification": TuringNLUForTokenClassification,
}
CASES = [
    ("bert", "Model", "h32"),
    ("bert", "Model", "h48"),
    ("bert", "ForMaskedLM", "h32"),
    ("bert", "ForMaskedLM", "h48"),
    ("bert", "ForQuestionAnswering", "h32"),
    ("bert", "ForSequenceClassification", "h48"),
    ("bert", "ForTokenClassification", "h32"),
    ("roberta", "Model", "h32"),
    ("roberta", "Model", "h48"),
    ("roberta", "ForMaskedLM", "h32"),
    ("roberta", "ForSequenceClassification", "h32"),
    ("xlm-roberta", "Model", "h32"),
    ("xlm-roberta", "ForMaskedLM", "h48"),
    ("xlm-roberta", "ForQuestionAnswering", "h32"),
]


def _labels(head: str, ids: torch.Tensor, mask: torch.Tensor, num_labels: int = 2) -> dict:
    gen = torch.Generator().manual_seed(7)
    if head == "ForMaskedLM":
        labels = torch.full_like(ids, -100)
        labels[:, 1] = ids[:, 1]
        return {"labels": labels}
    if head == "ForQuestionAnswering":
        return {"start_positions": torch.tensor([1, 2, 30]), "end_positions": torch.tensor([3, 2, 4])}
    if head == "ForSequenceClassification":
        return {"labels": torch.randint(0, num_labels, (ids.shape[0],), generator=gen)}
    if head == "ForTokenClassification":  # padding labelled -100, as the data collators do
        return {"labels": torch.randint(0, num_labels, ids.shape, generator=gen).masked_fill(mask == 0, -100)}
    return {}


def _compare(ref, out, mask, tol=1e-5):
    checked = 0
    for key, expected in ref.items():
        got = getattr(out, key, None)
        if got is None or not torch.is_tensor(expected):
            continue
        if key == "loss" and isinstance(out, QuestionAnsweringModelOutput) and not bool(mask.all()):
            continue  # TuringNLU keeps padding out of the QA softmax: see test_qa_loss_ignores_padding
        if expected.dim() >= 2 and expected.shape[:2] == mask.shape:  # per token: real positions only
            expected, got = expected[mask.bool()], got[mask.bool()]
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol, msg=lambda m: f"{key}: {m}")
        checked += 1
    return checked


@pytest.mark.parametrize("kind,head,shape", CASES)
def test_converted_checkpoint_matches_transformers(hf_folder, kind, head, shape):
    hf_model, folder = hf_folder(kind, head, shape)
    model = OURS[head].from_pretrained(folder).eval()
    assert model.config.source_model_type == kind
    for padding in (False, True):
        ids, mask = make_batch(kind, padding=padding)
        extra = _labels(head, ids, mask)
        with torch.no_grad():
            ref = hf_model(input_ids=ids, attention_mask=mask, **extra)
            for unpad in (True, False):
                model.config.unpad_inputs = unpad
                out = model(input_ids=ids, attention_mask=mask, **extra)
                # the loss, every head output and (for the base model) hidden state + pooler are compared
                assert _compare(ref, out, mask) >= (2 if extra or head == "Model" else 1)


def test_hidden_states_match_every_layer(hf_folder):
    hf_model, folder = hf_folder("bert", "Model", "h32")
    model = TuringNLUModel.from_pretrained(folder).eval()
    ids, mask = make_batch("bert")
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ref) == len(out) == 3
    for a, b in zip(ref, out):
        torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_token_type_ids_and_regression_head(hf_folder):
    hf_model, folder = hf_folder("bert", "ForSequenceClassification", "h32", num_labels=1)
    model = TuringNLUForSequenceClassification.from_pretrained(folder).eval()
    ids, mask = make_batch("bert")
    types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)
    labels = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert model.config.problem_type == "regression"
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,head", [("bert", "ForMaskedLM"), ("bert", "Model"), ("roberta", "ForSequenceClassification"),
                                       ("xlm-roberta", "ForQuestionAnswering")])
def test_export_round_trip(hf_folder, tmp_path, kind, head):
    hf_model, folder = hf_folder(kind, head, "h32")
    model = OURS[head].from_pretrained(folder)
    out_dir = tmp_path / "exported"
    export_to_hf(model, out_dir)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "temporary folder left behind"
    reloaded = getattr(transformers, "AutoModel" if head == "Model" else f"AutoModel{head}").from_pretrained(out_dir)
    assert type(reloaded) is type(hf_model)
    original, exported = hf_model.state_dict(), reloaded.state_dict()
    assert original.keys() == exported.keys()
    for key in original:
        torch.testing.assert_close(exported[key], original[key], atol=0, rtol=0, msg=lambda m: f"{key}: {m}")


def test_qa_loss_ignores_padding(hf_folder):
    """With padding, the QA loss is transformers' loss over the real positions only."""
    hf_model, folder = hf_folder("bert", "ForQuestionAnswering", "h32")
    model = TuringNLUForQuestionAnswering.from_pretrained(folder).eval()
    ids, mask = make_batch("bert")
    starts, ends = torch.tensor([1, 2, 3]), torch.tensor([3, 2, 4])
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask)
        out = model(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    pad = mask == 0
    s_logits = ref.start_logits.masked_fill(pad, -1e30)
    e_logits = ref.end_logits.masked_fill(pad, -1e30)
    expected = (torch.nn.functional.cross_entropy(s_logits, starts) + torch.nn.functional.cross_entropy(e_logits, ends)) / 2
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_in_memory_key_map_round_trips(kind):
    """transformers -> TuringNLU -> transformers is the identity, q / k / v fused per head and split back."""
    from turing_models.nlu.adapter_bert import config_from_hf, state_dict_from_hf, state_dict_to_hf

    hf_model = make_hf(kind, "ForMaskedLM")
    config = config_from_hf(hf_model.config.to_dict())
    ref = {k: v for k, v in hf_model.state_dict().items() if not k.endswith(("position_ids", "token_type_ids"))}
    ours = state_dict_from_hf(ref, config)
    heads, dim = config.num_attention_heads, config.head_dim
    prefix = "bert." if kind == "bert" else "roberta."
    qkv = ours["encoder.layers.1.attention.qkv.bias"].view(heads, 3, dim)
    assert torch.equal(qkv[2, 1], ref[prefix + "encoder.layer.1.attention.self.key.bias"].view(heads, dim)[2])
    back = state_dict_to_hf(ours, kind, heads)
    decoder = {k for k in ref if k.endswith("decoder.weight") or k.endswith("decoder.bias")}
    assert set(ref) - decoder <= set(back)
    for key in set(ref) - decoder:
        assert torch.equal(back[key], ref[key]), key
