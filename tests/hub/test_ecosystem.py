"""The Hugging Face ecosystem on our checkpoints: pipelines, PEFT LoRA, lm-eval-harness, big-model loading.

Checkpoints are tiny random-init save_pretrained folders with real tokenizers (tests/hub/conftest.py);
nothing here uses trust_remote_code: importing turing_models registers the classes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import turing_models.nlg  # noqa: F401  (registers turing_nlg with the Auto classes)
import turing_models.nlu  # noqa: F401


# --------------------------------------------------------------------------------------------- pipelines
def test_text_generation_pipeline(nlg_dir, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM, pipeline

    pipe = pipeline("text-generation", model=str(nlg_dir), device="cpu")
    assert type(pipe.model).__name__ == "TuringNLGForCausalLM"
    prompt = "ROMEO: good morrow"
    text = pipe(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    model = AutoModelForCausalLM.from_pretrained(nlg_dir).eval()
    ids = gpt2_tokenizer(prompt, return_tensors="pt")
    expected = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=50256)
    assert text == gpt2_tokenizer.decode(expected[0], skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_fill_mask_pipeline(nlu_dirs, bert_tokenizer):
    from transformers import AutoModelForMaskedLM, pipeline

    pipe = pipeline("fill-mask", model=str(nlu_dirs["mlm"]), device="cpu")
    out = pipe("the king of [MASK] is here.", top_k=3)
    model = AutoModelForMaskedLM.from_pretrained(nlu_dirs["mlm"]).eval()
    enc = bert_tokenizer("the king of [MASK] is here.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, (enc.input_ids[0] == bert_tokenizer.mask_token_id).nonzero()[0, 0]]
    probs, ids = logits.softmax(-1).topk(3)
    assert [o["token"] for o in out] == ids.tolist()
    assert [o["score"] for o in out] == pytest.approx(probs.tolist(), abs=1e-5)


def test_text_classification_pipeline(nlu_dirs, bert_tokenizer):
    from transformers import AutoModelForSequenceClassification, pipeline

    pipe = pipeline("text-classification", model=str(nlu_dirs["cls"]), device="cpu")
    out = pipe("a wonderful, moving film", top_k=None)
    model = AutoModelForSequenceClassification.from_pretrained(nlu_dirs["cls"]).eval()
    with torch.no_grad():
        probs = model(**bert_tokenizer("a wonderful, moving film", return_tensors="pt")).logits.softmax(-1)[0]
    assert {o["label"] for o in out} == {"negative", "neutral", "positive"}
    by_label = {o["label"]: o["score"] for o in out}
    for i, label in model.config.id2label.items():
        assert by_label[label] == pytest.approx(float(probs[i]), abs=1e-5)


def test_token_classification_pipeline(nlu_dirs, bert_tokenizer):
    from transformers import AutoModelForTokenClassification, pipeline

    pipe = pipeline("token-classification", model=str(nlu_dirs["tok"]), device="cpu")
    text = "william shakespeare lived in stratford"
    out = pipe(text)
    model = AutoModelForTokenClassification.from_pretrained(nlu_dirs["tok"]).eval()
    enc = bert_tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)[0]
    tokens = bert_tokenizer.convert_ids_to_tokens(enc.input_ids[0])
    for entity in out:  # one entry per word piece whose best label is not "O"-like index 0
        i = entity["index"]
        assert entity["word"] == tokens[i]
        assert entity["entity"] == model.config.id2label[int(probs[i].argmax())]
        assert entity["score"] == pytest.approx(float(probs[i].max()), abs=1e-5)


def test_question_answering_pipeline(nlu_dirs):
    from transformers import pipeline
    from transformers.pipelines import get_supported_tasks

    if "question-answering" not in get_supported_tasks():
        pytest.skip("this transformers version removed the question-answering pipeline; extractive QA "
                    "inference is turing_models.tasks.qa (tests/tasks)")
    pipe = pipeline("question-answering", model=str(nlu_dirs["qa"]), device="cpu")
    assert type(pipe.model).__name__ == "TuringNLUForQuestionAnswering"
    context = "the globe theatre was built in 1599 by the company of william shakespeare."
    out = pipe(question="when was the globe built?", context=context)
    assert 0 < out["score"] <= 1
    assert out["answer"] and out["answer"] == context[out["start"]:out["end"]]


# --------------------------------------------------------------------------------------------- PEFT
def _lora_round_trip(base_cls, model_dir, target_modules, task_type, inputs, output, tmp_path, **lora_kwargs):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = base_cls.from_pretrained(model_dir)
    before = getattr(base.eval()(**inputs), output).detach().clone()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, task_type=task_type, lora_dropout=0.0,
                        **lora_kwargs)
    model = get_peft_model(base, config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    wrapped = {n.split(".base_layer")[0].rsplit(".", 1)[-1] for n, _ in model.named_modules() if n.endswith("base_layer")}
    assert wrapped == set(target_modules)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        tuned = getattr(model(**inputs), output)
    assert not torch.allclose(tuned, before, atol=1e-4)  # the adapter changed the model

    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) == set(target_modules)
    reloaded = PeftModel.from_pretrained(base_cls.from_pretrained(model_dir), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(getattr(reloaded(**inputs), output), tuned, atol=1e-5, rtol=1e-5)
        merged = reloaded.merge_and_unload()
        assert type(merged) is base_cls
        torch.testing.assert_close(getattr(merged(**inputs), output), tuned, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = base_cls.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(getattr(again(**inputs), output), tuned, atol=1e-5, rtol=1e-5)


def test_peft_lora_on_turing_nlg(nlg_dir, tmp_path):
    from turing_models.nlg import TuringNLGForCausalLM

    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "labels": ids}
    _lora_round_trip(TuringNLGForCausalLM, nlg_dir, ["qkv", "dense", "fc_in", "fc_out"], "CAUSAL_LM", inputs,
                     "logits", tmp_path)


def test_peft_lora_on_turing_nlu_classifier(nlu_dirs, tmp_path):
    from turing_models.nlu import TuringNLUForSequenceClassification

    ids = torch.randint(5, 8192, (4, 10), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}
    # task_type SEQ_CLS also trains and saves the classifier head (modules_to_save)
    _lora_round_trip(TuringNLUForSequenceClassification, nlu_dirs["cls"], ["qkv", "out", "fc_in", "fc_out"],
                     "SEQ_CLS", inputs, "logits", tmp_path)


# --------------------------------------------------------------------------------------------- lm-eval
@pytest.mark.slow  # importing lm-eval and building its task dominates (~20-40 s on 2 cores)
def test_lm_eval_hflm_loglikelihood(nlg_dir, gpt2_tokenizer, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from turing_models.nlg import TuringNLGForCausalLM

    lm = HFLM(pretrained=str(nlg_dir), device="cpu", batch_size=2, dtype="float32")
    assert type(lm.model).__name__ == "TuringNLGForCausalLM"
    pairs = [("The capital of France is", " Paris"), ("Two plus two is", " four"), ("ROMEO:", " O, she doth")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    results = lm.loglikelihood(requests)

    model = TuringNLGForCausalLM.from_pretrained(nlg_dir).eval()
    for (context, continuation), (logprob, greedy) in zip(pairs, results):
        ctx = gpt2_tokenizer(context).input_ids
        cont = gpt2_tokenizer(continuation).input_ids
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        picked = logp[len(ctx) - 1:].gather(-1, torch.tensor(cont)[:, None])
        assert logprob == pytest.approx(float(picked.sum()), abs=1e-4)
        assert greedy == bool((logp[len(ctx) - 1:].argmax(-1) == torch.tensor(cont)).all())

    # a tiny local multiple-choice task through lm-eval's task system
    docs = [{"q": "ROMEO: what light through yonder window", "choices": [" breaks", " sleeps"], "gold": 0},
            {"q": "To be, or not to", "choices": [" be", " sing"], "gold": 0},
            {"q": "Now is the winter of our", "choices": [" content", " discontent"], "gold": 1}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: turing_tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_target: gold\n"
        "doc_to_choice: '{{choices}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=lm, tasks=["turing_tiny_mc"], task_manager=TaskManager(include_path=str(tmp_path)),
                                  bootstrap_iters=0, log_samples=False)
    acc = out["results"]["turing_tiny_mc"]["acc,none"]
    expected = 0
    for d in docs:
        scores = [lm.loglikelihood([Instance("loglikelihood", {}, (d["q"], c), 0)])[0][0] for c in d["choices"]]
        expected += int(max(range(2), key=lambda i: scores[i]) == d["gold"])
    assert acc == pytest.approx(expected / len(docs))


# --------------------------------------------------------------------------------------------- big models
def test_device_map_auto_and_meta_init(nlg_dir, nlu_dirs):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM, nlg_num_parameters

    ids = torch.tensor([[464, 2068, 7586, 21831]])
    reference = TuringNLGForCausalLM.from_pretrained(nlg_dir).eval()
    with torch.no_grad():
        expected = reference(ids).logits

    auto = AutoModelForCausalLM.from_pretrained(nlg_dir, device_map="auto").eval()
    assert not any(p.is_meta for p in auto.parameters())  # (transformers sets hf_device_map only on GPUs)
    with torch.no_grad():
        torch.testing.assert_close(auto(ids.to(auto.device)).logits.cpu(), expected)

    # meta init, then the weights assigned in place (one copy): what from_pretrained does inside.
    # (accelerate's load_checkpoint_and_dispatch loses tied weights with transformers 5, for GPT-2 too.)
    from safetensors.torch import load_file

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(nlg_dir))
    assert all(p.is_meta for p in empty.parameters())
    empty.load_state_dict(load_file(str(nlg_dir / "model.safetensors")), strict=False, assign=True)
    empty.tie_weights()
    assert not any(p.is_meta for p in empty.parameters())
    assert empty.lm_head.weight is empty.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        torch.testing.assert_close(empty.eval()(ids).logits, expected)

    mlm = AutoModelForMaskedLM.from_pretrained(nlu_dirs["mlm"], device_map="auto")
    assert not any(p.is_meta for p in mlm.parameters())

    # Turing-NLG 17B on the meta device: no memory, the closed-form parameter count
    config = TuringNLGConfig.from_name("17b")
    with torch.device("meta"):
        big = TuringNLGForCausalLM(config)
    n = sum(p.numel() for p in big.parameters())
    assert n == nlg_num_parameters(config) and math.isclose(n / 1e9, 17.2, abs_tol=0.2)
