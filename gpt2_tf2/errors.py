"""The one exception type for bad input; the command-line face prints it as a single line."""

import re


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and what to do."""


def first_line(e: Exception) -> str:
    """The first line of an exception's message (TensorFlow's run on for pages), or its type;
    without TensorFlow's `{{function_node ...}}` prefix and `[Op:...]` suffix."""
    text = getattr(e, "message", None) or str(e)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]", "", text).strip()
    return text.splitlines()[0] if text else type(e).__name__


def reason(e: Exception) -> str:
    """Why an operation failed, for one line: an OSError's own words, else `first_line`."""
    return getattr(e, "strerror", None) or first_line(e)
