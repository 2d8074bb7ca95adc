"""Model cards and uploads (turing_models.hub), tested against a stand-in for the Hub API."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from turing_models import hub
from turing_models.errors import UsageError

RECIPE = """\
model:
  scale: tiny
data:
  corpus: recipes/data/tinyshakespeare.txt
  tokenizer: gpt2-bpe
train:
  run_name: nlg-tiny
  max_steps: 300
  lr: 0.002
"""


@pytest.fixture
def run_dir(tmp_path, nlg_dir):
    """A run folder as the trainer leaves it: final/, metrics.jsonl, config.yaml."""
    run = tmp_path / "runs" / "nlg-tiny"
    shutil.copytree(nlg_dir, run / "final")
    records = [
        {"step": 10, "loss": 6.5, "lr": 1e-3, "tokens": 20480, "tokens_per_s": 900.0},
        {"step": 20, "loss": 5.25, "lr": 2e-3, "tokens": 40960, "tokens_per_s": 950.0},
        {"step": 20, "eval_loss": 5.5, "eval_ppl": 244.69},
        {"step": 30, "loss": 4.75, "lr": 1e-3, "tokens": 61440, "tokens_per_s": 940.0},
        {"step": 30, "eval_loss": 4.9375, "eval_ppl": 139.41},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "config.yaml").write_text(RECIPE)
    return run


def test_card_reports_the_run(run_dir, nlg_dir):
    from turing_models.nlg import TuringNLGForCausalLM

    card = hub.model_card(run_dir / "final", repo_id="my-org/turing-nlg-tiny")
    params = sum(p.numel() for p in TuringNLGForCausalLM.from_pretrained(nlg_dir).parameters())
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "pipeline_tag: text-generation" in card and "- turing_nlg" in card
    assert "# my-org/turing-nlg-tiny" in card
    assert "`TuringNLGForCausalLM`" in card and f"({params:,})" in card
    assert "2 / 32 / 4 (head dim 8)" in card and "50,257 tokens" in card
    assert "- tokens seen: 61,440" in card and "- optimizer steps: 30" in card
    assert "corpus `recipes/data/tinyshakespeare.txt`" in card
    assert "| final training loss | 4.7500 |" in card
    assert "| eval_loss | 4.9375 |" in card and "| eval_ppl | 139.4100 |" in card
    assert "```yaml\n" + RECIPE.rstrip("\n") + "\n```" in card
    assert "AutoModelForCausalLM.from_pretrained('my-org/turing-nlg-tiny')" in card


def test_card_for_a_finetuned_classifier(tmp_path, nlu_dirs):
    run = tmp_path / "run"
    shutil.copytree(nlu_dirs["cls"], run / "final")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.7, "tokens": 640}) + "\n")
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.875, "f1": 0.8, "task": "classification",
                                                  "eval_loss": 0.4}))
    card = hub.model_card(run / "final")
    assert "pipeline_tag: text-classification" in card
    assert "| accuracy | 0.8750 |" in card and "| f1 | 0.8000 |" in card
    assert "negative, neutral, positive" in card
    assert "# run" in card  # named after the run, not "final"
    assert "not recorded" in card  # no recipe config -> no training data recorded


def test_card_without_a_run(nlg_dir):
    card = hub.model_card(nlg_dir)
    assert "No metrics were recorded" in card and "tokens seen: not recorded" in card


def test_corrupt_metrics_line_is_named(run_dir):
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(UsageError, match=r"metrics.jsonl:6 is not a JSON line"):
        hub.model_card(run_dir / "final")


class FakeHub:
    """Records what push() asks of the Hub API; uploads nothing."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail is not None:
            raise self.fail

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, operations, kwargs))
        return "commit-url"


def test_push_builds_one_commit_with_the_card(run_dir):
    api = FakeHub()
    (run_dir / "final" / "README.md").write_text("old card")
    (run_dir / "final" / ".hidden").write_text("x")
    result = hub.push(run_dir / "final", "my-org/turing-nlg-tiny", private=True, api=api)
    (_, repo, repo_kwargs), (_, repo2, ops, commit_kwargs) = api.calls
    assert repo == repo2 == "my-org/turing-nlg-tiny"
    assert repo_kwargs["private"] is True and repo_kwargs["exist_ok"] is True
    uploaded = {op.path_in_repo: op for op in ops}
    expected = sorted(p.name for p in (run_dir / "final").iterdir() if not p.name.startswith("."))
    assert sorted(uploaded) == expected
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(uploaded)
    card = uploaded["README.md"].path_or_fileobj
    assert isinstance(card, bytes) and card.decode() == result["card"]
    assert "tokens seen: 61,440" in result["card"]
    assert uploaded["model.safetensors"].path_or_fileobj == str(run_dir / "final" / "model.safetensors")
    assert result["commit"] == "commit-url"


def test_push_failures_are_one_line(run_dir, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(UsageError, match="not reachable .* check the network"):
        hub.push(run_dir / "final", "my-org/x", api=FakeHub(fail=ConnectionError("no route to host")))
    httpx = pytest.importorskip("httpx2")  # the HTTP client of this huggingface_hub
    with pytest.raises(UsageError, match="not reachable"):
        hub.push(run_dir / "final", "my-org/x", api=FakeHub(fail=httpx.ConnectError("connection refused")))
    with pytest.raises(UsageError, match="needs <namespace>/<name>"):
        hub.push(run_dir / "final", "x", api=FakeHub())


def test_push_dry_run_cli(run_dir, run_cli):
    code, out, err, result = run_cli(["push", run_dir / "final", "my-org/turing-nlg-tiny", "--dry-run",
                                      "--dataset", "karpathy/tiny_shakespeare"])
    assert code == 0, err
    assert "dry run: would upload" in out and "README.md" in result["files"]
    assert "- karpathy/tiny_shakespeare" in result["card"]


def test_count_parameters_reads_headers_only(nlu_dirs):
    from turing_models.nlu import TuringNLUForQuestionAnswering

    model = TuringNLUForQuestionAnswering.from_pretrained(nlu_dirs["qa"])
    assert hub.count_parameters(nlu_dirs["qa"]) == sum(p.numel() for p in model.parameters())
    assert torch.is_grad_enabled()
