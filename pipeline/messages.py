"""Expected errors and how they read: one base class, so the `dip` command can tell a person's
mistake (a bad option, an unreadable image, an invalid manifest, an unreachable service),
printed as one line, from a bug, which keeps its traceback."""

from __future__ import annotations


class DipError(Exception):
    """An expected error whose message alone tells the user what to fix; `dip` prints it as one line."""


class UserError(DipError, ValueError):
    """A request that cannot be carried out as given (an option, a location, an empty store)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill` ending the run), raised where Ctrl-C would be, so that it
    ends a sweep by the same path: stored fits kept, one line on how to resume, exit 143."""


def one_line(message: str | BaseException, limit: int = 300) -> str:
    """The first non-blank line of a message, spaces collapsed, at most `limit` characters:
    third-party errors (botocore, MLflow, Ray) can span many lines. An exception with no message
    reads as its type name."""
    text = str(message)
    first = next((line for line in text.splitlines() if line.strip()), "")
    first = " ".join(first.split()) or (type(message).__name__ if isinstance(message, BaseException) else "")
    return first if len(first) <= limit else first[: limit - 1] + "…"
