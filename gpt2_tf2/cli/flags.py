"""What the command line tells about flags before fire runs a command: `--help` (the flag list
the guides' tables show, from the signature and the `Args:` docstring) and one line for an
unknown flag (with the closest real one) or a positional argument the command does not take."""

from __future__ import annotations

import difflib
import inspect
import re
import textwrap

from gpt2_tf2.errors import UserError


def docstring_parts(fn) -> tuple[str, dict[str, str]]:
    """(the description before `Args:`, {flag: its help}) of a command's docstring."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    description, _, args = doc.partition("\nArgs:\n")
    helps, name = {}, None
    for line in args.splitlines():
        match = re.match(r"^  (\w+): ?(.*)$", line)
        if match:
            name = match.group(1)
            helps[name] = match.group(2).strip()
        elif name and line.strip():
            helps[name] += " " + line.strip()
    return description.strip(), helps


def positional_names(fn) -> tuple[str, ...] | None:
    """The parameters a command takes by position: `fn.positional` where the command says so
    (None: any, as fire allows; the drop-in tools keep that)."""
    return getattr(fn, "positional", None)


def help_text(fn, name: str) -> str:
    description, helps = docstring_parts(fn)
    params = inspect.signature(fn).parameters
    positional = positional_names(fn) or ()
    usage = [name]
    for p in params.values():
        if p.name in positional:
            star = "..." if p.kind is inspect.Parameter.VAR_POSITIONAL else ""
            usage.append(p.name.upper() + star)
    lines = [f"usage: {' '.join(usage)} [FLAGS]", "", description, "", "flags:"]
    for p in params.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            lines.append(f"  {p.name.upper()}...")
        elif isinstance(p.default, bool):
            lines.append(
                f"  --{p.name} (a switch; off unless given)"
                if not p.default
                else f"  --{p.name} / --no{p.name} (default: on)"
            )
        elif p.default is inspect.Parameter.empty or p.name in positional:
            lines.append(f"  {p.name.upper()} (or --{p.name})")
        else:
            default = "none" if p.default is None else p.default
            lines.append(f"  --{p.name} (default: {default})")
        text = helps.get(p.name, "")
        lines += textwrap.wrap(text, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def check_argv(fn, argv: list[str], switches: set[str]) -> None:
    """One clear error for a flag the command does not have, or a positional argument where
    it takes none (fire would bind it to the first parameter instead)."""
    params = inspect.signature(fn).parameters
    names = {p.name for p in params.values() if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    allowed = positional_names(fn)
    takes_any = allowed is None or any(
        params[n].kind is inspect.Parameter.VAR_POSITIONAL for n in allowed if n in params
    )
    positional, expect_value = [], False
    for arg in argv:
        if expect_value:
            expect_value = False
            continue
        if arg.startswith("--") and len(arg) > 2:
            flag = arg[2:].split("=", 1)[0].replace("-", "_")
            if flag not in names and flag not in switches:
                near = difflib.get_close_matches(flag, sorted(names), n=1)
                hint = f"; did you mean --{near[0]}?" if near else "; see --help"
                raise UserError(f"unknown flag --{flag}{hint}")
            expect_value = "=" not in arg and flag not in switches
        elif arg.startswith("-") and len(arg) == 2 and arg[1].isalpha():
            expect_value = arg[1:] not in switches
        else:
            positional.append(arg)
    if takes_any:
        return
    if len(positional) > len(allowed):
        extra = positional[len(allowed)]
        if not allowed:
            raise UserError(f"no positional arguments are taken (got {extra!r}); use --flags")
        raise UserError(
            f"unexpected argument {extra!r}; takes {len(allowed)}: "
            f"{' '.join(n.upper() for n in allowed)}"
        )


def command_signature(summary: str, fields) -> tuple[inspect.Signature, str]:
    """A command's signature and docstring (`Args:` as `help_text` reads it) from
    (name, default, help) triples: the flags of a command whose settings are config fields
    (`TrainConfig`, `GenerationConfig`), so that names, defaults and help live in one place."""
    params, helps = [], []
    for name, default, text in fields:
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(name, kind, default=default))
        first = f"  {name}: "
        helps.append(textwrap.fill(text, 98, initial_indent=first, subsequent_indent="    "))
    return inspect.Signature(params), f"{summary}\n\nArgs:\n" + "\n".join(helps) + "\n"


def config_fields(config_class, defaults: dict | None = None):
    """(name, default, help) of a config dataclass's fields (each with metadata["help"]);
    `defaults` replaces some of the defaults (the command line's own)."""
    import dataclasses

    defaults = defaults or {}
    return [
        (f.name, defaults.get(f.name, f.default), f.metadata["help"])
        for f in dataclasses.fields(config_class)
    ]
