"""Suite-wide settings: deterministic, offline, CPU-friendly; Triton interpreted without CUDA."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Without CUDA the Triton kernels run under Triton's CPU interpreter (fp32/fp16 only: the
# interpreter's bf16 tl.dot is wrong, triton issue 11584). Triton decides between interpreting and
# compiling when triton.language is first imported, and transformers imports it, so the variable is
# set here, before anything else, for the whole suite. The fused_* flags and attn_implementation
# stay off by default, so other tests keep the plain PyTorch paths unless they ask for the kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `make test` runs two pytest-xdist workers on the 2-core machines: one intra-op thread each keeps
# them from oversubscribing the cores (tiny models run faster single-threaded anyway).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
