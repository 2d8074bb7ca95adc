"""Kernel tests run natively on a GPU, and under Triton's interpreter on the CPU.

Triton chooses between compiling and interpreting when a kernel is *defined*, and that includes its
standard library (``tl.sum``, ``tl.rand``, ...), defined when ``triton.language`` is first imported.
Without CUDA this file therefore sets TRITON_INTERPRET=1 before Triton is imported and defines the
``turing_kernels._*_triton`` kernels under it. It then puts the variable back as it was, so the rest
of the suite keeps its own setting; the kernel tests switch the interpreter on for themselves
through the autouse fixture below.

transformers imports Triton, so in a whole-suite run some earlier test module may have imported it
already: tests/conftest.py imports ``triton.language`` under TRITON_INTERPRET=1 (without CUDA)
before anything else for that reason. If Triton was nevertheless imported in compiled mode on a
machine without CUDA, the kernel tests are skipped with a message saying so.
"""

import importlib
import os

import pytest
import torch

_INTERPRET = not torch.cuda.is_available()
_before = os.environ.get("TRITON_INTERPRET")
if _INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton", reason="the kernel tests need Triton")

_BROKEN = None
if _INTERPRET:
    from triton.runtime.interpreter import InterpretedFunction

    import triton.language as tl

    if not isinstance(tl.standard.sum, InterpretedFunction):
        _BROKEN = ("Triton was imported before TRITON_INTERPRET=1 was set, so its standard library is compiled-only "
                   "and cannot run on the CPU: set TRITON_INTERPRET=1 in the environment, or import triton.language under "
                   "it at the top of tests/conftest.py.")
    else:
        for _name in ("_attention_triton", "_layernorm_triton", "_cross_entropy_triton", "_bias_gelu_triton"):
            importlib.import_module(f"turing_kernels.{_name}")
    if _before is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _before


def pytest_collection_modifyitems(config, items):
    if _BROKEN:
        here = os.path.dirname(__file__)
        for item in items:
            if str(item.fspath).startswith(here):
                item.add_marker(pytest.mark.skip(reason=_BROKEN))


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch):
    if _INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
