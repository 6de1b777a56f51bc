"""Chat messages as a GPT-2 prompt. GPT-2 was never trained on a chat format, so the server
writes a conversation as plain text a language model continues naturally, and stops where the
model would begin the user's next turn:

    {system}\\n\\nUser: {content}\\nAssistant: {content}\\n...User: {content}\\nAssistant:

A template file (`--chat_template FILE`, JSON) changes it: each of "system", "user" and
"assistant" is a format string with `{content}`; "generation" is what the prompt ends with (the
assistant's turn begins); "stop" lists the stop sequences added to every chat request. Missing
keys keep the defaults below.
"""

from __future__ import annotations

import json

from gpt2_tf2.errors import UserError
from gpt2_tf2.server.protocol import APIError

DEFAULT = {
    "system": "{content}\n\n",
    "user": "User: {content}\n",
    "assistant": "Assistant: {content}\n",
    "generation": "Assistant:",
    "stop": ["\nUser:"],
}


def load_template(path: str | None) -> dict:
    """The default template, with a JSON file's keys in place of its own."""
    if path is None:
        return dict(DEFAULT)
    try:
        with open(path, encoding="utf-8") as f:
            given = json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the chat template ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e}); see docs/serving.md for the format") from None
    unknown = sorted(set(given) - set(DEFAULT)) if isinstance(given, dict) else ["?"]
    if unknown:
        raise UserError(
            f"{path}: a chat template is a JSON object with keys {', '.join(DEFAULT)}; "
            f"got {unknown[0]!r}"
        )
    template = {**DEFAULT, **given}
    for role in ("system", "user", "assistant"):
        if not isinstance(template[role], str) or "{content}" not in template[role]:
            raise UserError(f"{path}: {role!r} must be a string with {{content}} in it")
    stop = template["stop"]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise UserError(f"{path}: 'stop' must be a list of non-empty strings")
    return template


def prompt_of(messages, template: dict) -> str:
    """The prompt for a list of OpenAI chat messages; an APIError (400) if they are malformed."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    parts = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role must be system, user or assistant", "messages")
        parts.append(template[role].replace("{content}", _content(m.get("content"), i)))
    return "".join(parts) + template["generation"]


def _content(content, i: int) -> str:
    """A message's text: a string, or a list of text parts (OpenAI's content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise APIError(400, f"messages[{i}].content must be text", "messages")
