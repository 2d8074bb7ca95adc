"""The model zoo: every named scale of both families, and where a model name points.

``python -m turing_models.zoo`` prints the zoo tables that README.md shows (a test keeps the two
in agreement)::

    from turing_models import zoo
    zoo.names()                      # ['nlg-tiny', ..., 'nlg-17b', 'nlu-tiny', ..., 'nlu-xl']
    zoo.config("nlg-17b")            # TuringNLGConfig of Turing-NLG (bare "17b" works too)
    zoo.build("nlu-base")            # a randomly initialised TuringNLUModel
    zoo.resolve("gpt2")              # a local folder if there is one, else the Hub id

Names are ``<family>-<scale>``; a bare scale name is looked up in the NLG family first.
:func:`resolve` follows the local checkpoint store's layout (``checkpoints/<org>/<name>``,
litgpt's convention) before it falls back to the Hugging Face Hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import UsageError

FAMILIES = ("nlg", "nlu")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    scale: str
    layers: int
    hidden: int
    heads: int
    head_dim: int
    context: int
    vocab: int
    parameters: int
    tp_sizes: tuple[int, ...] = (1,)  # tensor-parallel sizes with whole heads and MLP columns per rank

    @property
    def parameters_human(self) -> str:
        n = self.parameters
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _split(name: str) -> tuple[str, str]:
    from .nlg import NLG_SCALES
    from .nlu import NLU_SCALES

    key = str(name).strip().lower()
    scales = {"nlg": NLG_SCALES, "nlu": NLU_SCALES}
    for family in FAMILIES:
        if key.startswith(family + "-") and key[len(family) + 1 :] in scales[family]:
            return family, key[len(family) + 1 :]
    if key in NLG_SCALES:
        return "nlg", key
    if key in NLU_SCALES:
        return "nlu", key
    raise UsageError(f"zoo name {name!r} is unknown; choose one of {', '.join(names())}.")


def names(family: Optional[str] = None) -> list[str]:
    """All zoo names (``nlg-<scale>``, ``nlu-<scale>``), optionally of one family."""
    from .nlg import NLG_SCALES
    from .nlu import NLU_SCALES

    out = []
    if family in (None, "nlg"):
        out += [f"nlg-{s}" for s in NLG_SCALES]
    if family in (None, "nlu"):
        out += [f"nlu-{s}" for s in NLU_SCALES]
    return out


def config(name: str, **overrides):
    """The config of a named scale; keyword arguments override fields."""
    family, scale = _split(name)
    if family == "nlg":
        from .nlg import TuringNLGConfig

        return TuringNLGConfig.from_name(scale, **overrides)
    from .nlu import TuringNLUConfig

    return TuringNLUConfig.from_name(scale, **overrides)


def build(name: str, **overrides):
    """A randomly initialised base model of a named scale (``TuringNLGForCausalLM`` for NLG,
    ``TuringNLUModel`` for NLU). Build inside ``torch.device("meta")`` to allocate nothing."""
    cfg = config(name, **overrides)
    if cfg.model_type == "turing_nlg":
        from .nlg import TuringNLGForCausalLM

        return TuringNLGForCausalLM(cfg)
    from .nlu import TuringNLUModel

    return TuringNLUModel(cfg)


def entry(name: str) -> ZooEntry:
    """Shape and closed-form parameter count of a named scale."""
    family, scale = _split(name)
    cfg = config(name)
    if family == "nlg":
        from .nlg import nlg_num_parameters

        params = nlg_num_parameters(cfg)
        vocab = cfg.real_vocab_size or cfg.vocab_size
    else:
        from .nlu import num_parameters

        params = num_parameters(cfg)
        vocab = cfg.vocab_size
    return ZooEntry(
        name=f"{family}-{scale}",
        family=family,
        scale=scale,
        layers=cfg.num_hidden_layers,
        hidden=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        context=cfg.max_position_embeddings,
        vocab=vocab,
        parameters=params,
        tp_sizes=tuple(_tp_sizes(cfg.num_attention_heads, cfg.intermediate_size)),
    )


def tp_sizes(name: str, limit: Optional[int] = None) -> list[int]:
    """Tensor-parallel sizes a named scale allows: each rank holds whole attention heads and an
    equal share of the MLP width (e.g. ``tp_sizes("nlg-17b", limit=8)`` -> ``[1, 2, 4]``: 28 heads)."""
    cfg = config(name)
    return _tp_sizes(cfg.num_attention_heads, cfg.intermediate_size, limit)


def _tp_sizes(heads: int, width: int, limit: Optional[int] = None) -> list[int]:
    from .layers.tensor_parallel import tp_sizes as sizes

    return sizes(heads, width, limit)


def markdown_table(family: str) -> str:
    """The README's zoo table of one family."""
    rows = [
        "| name | layers | hidden | heads | head dim | context | vocab | parameters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names(family):
        e = entry(n)
        rows.append(
            f"| `{e.name}` | {e.layers} | {e.hidden} | {e.heads} | {e.head_dim} | {e.context} | "
            f"{e.vocab} | {e.parameters_human} ({e.parameters:,}) |"
        )
    return "\n".join(rows)


def tp_markdown_table(limit: int = 8) -> str:
    """Which tensor-parallel sizes up to ``limit`` (GPUs in a node) every named scale allows."""
    rows = ["| name | heads | MLP width | TP sizes (<= %d) |" % limit, "|---|---:|---:|---|"]
    for n in names():
        cfg = config(n)
        allowed = _tp_sizes(cfg.num_attention_heads, cfg.intermediate_size, limit)
        rows.append(f"| `{n}` | {cfg.num_attention_heads} | {cfg.intermediate_size} | "
                    f"{', '.join(map(str, allowed))} |")
    return "\n".join(rows)


def checkpoints_dir() -> Path:
    """The local checkpoint store: ``$TURING_CHECKPOINTS`` or ``./checkpoints``."""
    return Path(os.environ.get("TURING_CHECKPOINTS", "checkpoints"))


def resolve(name_or_path: Union[str, os.PathLike]) -> str:
    """Where a model reference points: an existing folder as given, else
    ``checkpoints/<org>/<name>`` when the store holds it, else the Hub id unchanged (resolved by
    huggingface_hub when loaded)."""
    path = Path(name_or_path)
    if path.is_dir():
        return str(path)
    text = str(name_or_path)
    if text.count("/") <= 1 and not text.startswith((".", "/")):
        stored = checkpoints_dir() / text
        if stored.is_dir():
            return str(stored)
    return text


def main() -> None:
    print("TuringNLG (decoder):\n")
    print(markdown_table("nlg"))
    print("\nTuringNLU (encoder):\n")
    print(markdown_table("nlu"))
    print("\nTensor-parallel sizes (whole heads and MLP columns per rank):\n")
    print(tp_markdown_table())


if __name__ == "__main__":
    main()
