"""Errors for people (DESIGN.md principle 8).

Every recipe wraps its ``main`` with :func:`cli_main`: a :class:`UsageError` (or a
``ValueError`` / ``FileNotFoundError`` raised while validating input) becomes one line on
stderr, ``error: <what is wrong and how to fix it>``, and exit status 2. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UsageError(ValueError):
    """Bad input from the user: a config, data path, checkpoint or argument.

    The message is a complete sentence saying what is wrong and how to fix it.
    """


USAGE_ERRORS: tuple[type[BaseException], ...] = (UsageError, ValueError, FileNotFoundError)


def one_line(exc: BaseException) -> str:
    """The exception's message folded onto one line."""
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())


def cli_main(fn: F) -> F:
    """Decorate a recipe's ``main``: usage errors exit 2 with one line, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USAGE_ERRORS as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
