"""Errors for people.

Every recipe wraps its ``main`` with :func:`cli_main`, which maps exactly these to one line on
stderr and an exit status:

* :class:`UsageError` (bad input: a config, path, checkpoint or argument): ``error: <what is
  wrong and how to fix it>``, exit status 2;
* a :class:`RuntimeFault` (documented faults that are neither bugs nor bad input): its own line
  and status, e.g. a full disk (74) or a preempted run (143);
* Ctrl-C outside training: ``interrupted``, exit status 130.

Anything else is a bug and keeps its traceback. Code that validates user input raises
:class:`UsageError`.
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


class RuntimeFault(Exception):
    """A documented runtime fault (not a bug, not bad input): one line on stderr and its own exit
    status. Subclasses set ``exit_status`` and the line's ``prefix``."""

    exit_status = 1
    prefix = "error"


class Preempted(RuntimeFault):
    """SIGTERM (a scheduler's preemption) or SIGINT stopped training after a checkpoint was saved;
    exit status 143 (128 + SIGTERM), so a scheduler sees the job as not finished."""

    exit_status = 143
    prefix = "stopped"


#: What :func:`cli_main` reports as bad input (exit status 2). A plain ``ValueError`` or
#: ``FileNotFoundError`` escaping a recipe is a bug (input checks raise :class:`UsageError`), so
#: it keeps its traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (UsageError,)


def one_line(exc: BaseException) -> str:
    """The exception's message folded onto one line."""
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())


def cli_main(fn: F) -> F:
    """Decorate a recipe's ``main``: usage errors exit 2 with one line, runtime faults with their
    own status and one line; anything else keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeFault as exc:  # a full disk (74), a preempted run (143)
            print(f"{exc.prefix}: {one_line(exc)}", file=sys.stderr)
            raise SystemExit(exc.exit_status) from None
        except USAGE_ERRORS as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
