"""The one exception type for bad input; the command-line face prints it as a single line.

A message is in the library's words: it names a setting by its parameter name in backticks
(`` `out` ``), which the command line shows as the flag of the same name (`flag_spelling`)."""

import re


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and what to do."""


SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")  # a setting named in a message


def spelled(message: str, spell) -> str:
    """`message` with each `name` in it written as `spell(name)` says (another face's words)."""
    return SETTING.sub(lambda m: spell(m.group(1)), message)


def first_setting(message: str) -> str | None:
    """The first setting a message names (what it is about), or None."""
    found = SETTING.search(message)
    return found.group(1) if found else None


def flag_spelling(message: str, flags=None) -> str:
    """A library message as the command line says it: each `name` as --name (a command's flags
    are its function's parameters, by the same names). With `flags`, the command's own: a name
    it has no flag for (a setting of a step it calls, e.g. the download `sample` starts) is
    written plainly, never as a flag the command would refuse."""
    return spelled(message, lambda name: f"--{name}" if flags is None or name in flags else name)


def first_line(e: Exception) -> str:
    """The first line of an exception's message (TensorFlow's run on for pages), or its type;
    without TensorFlow's `{{function_node ...}}` prefix and `[Op:...]` suffix."""
    text = getattr(e, "message", None) or str(e)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]", "", text).strip()
    return text.splitlines()[0] if text else type(e).__name__


def reason(e: Exception) -> str:
    """Why an operation failed, for one line: an OSError's own words, else `first_line`."""
    return getattr(e, "strerror", None) or first_line(e)
