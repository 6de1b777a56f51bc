"""The package's layers: imports point down only, with no cycle, and only the command line
touches process-wide state. Checked on the source (AST), every import included, also those
inside functions; the checker itself is tested on packages made to break each rule."""

from __future__ import annotations

import ast
import os

from conftest import REPO

# Lower layers first; a module may import its own subpackage and any lower layer. Layers on the
# same level (core, tokenizer) are independent of each other.
LAYERS = {
    "errors": 0,
    "files": 0.5,  # reads and writes files; may raise errors.UserError
    "core": 1,
    "tokenizer": 1,
    "formats": 2,
    "generation": 3,
    "training": 4,
    "server": 4.5,  # the HTTP server: over generation, under the command line
    "cli": 5,
}
TOP = 6  # gpt2_tf2/*.py: the public API module and the `python -m` entry points
# Process-wide effects that belong to the command line only (docs/architecture.md).
PROCESS_WIDE = ("os.dup2", "signal.signal", "sys.stderr =", "sys.stdout =", "logging.basicConfig")


def modules(root: str, package: str) -> dict[str, str]:
    """{dotted module name: file} for every .py below root/package."""
    found = {}
    for dirpath, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports(path: str, known: dict[str, str], package: str) -> set[str]:
    """The package's modules that the file imports (`from p import m` names module p.m)."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n for n in subs if n in known] or [node.module]
        else:
            continue
        out |= {n for n in names if n in known and n.split(".")[0] == package}
    return out


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 1 else ""
    return (LAYERS[sub], sub) if sub in LAYERS else (TOP, module)


def violations(root: str, package: str = "gpt2_tf2") -> list[str]:
    known = modules(root, package)
    graph = {m: imports(path, known, package) for m, path in known.items()}
    found = []
    for module, targets in sorted(graph.items()):
        (low, sub) = layer(module)
        for target in sorted(targets):
            (t_low, t_sub) = layer(target)
            if t_low > low or (t_low == low and t_sub != sub and low < TOP):
                found.append(f"{module} imports {target} (upward or sideways)")
    found += [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of the graph that has one."""
    seen, stack, out = set(), [], []

    def visit(node, path):
        if node in path:
            out.append(path[path.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])

    for node in sorted(graph):
        visit(node, stack)
    return out


def test_imports_point_down_with_no_cycle():
    assert violations(REPO) == []


def test_only_the_command_line_touches_process_wide_state():
    offenders = []
    for module, path in modules(REPO, "gpt2_tf2").items():
        if layer(module)[0] < LAYERS["cli"]:
            text = open(path, encoding="utf-8").read()
            offenders += [f"{module}: {c}" for c in PROCESS_WIDE if c in text]
    assert offenders == []


def write_package(root, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = root / "gpt2_tf2" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def test_the_checker_finds_upward_sideways_and_cyclic_imports(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/model.py": "def f():\n    from gpt2_tf2.generation import loop\n",
            "tokenizer/__init__.py": "",
            "tokenizer/bpe.py": "from gpt2_tf2.core import model\n",
            "generation/__init__.py": "",
            "generation/loop.py": "import gpt2_tf2.core.model\n",
            "generation/a.py": "from gpt2_tf2.generation import b\n",
            "generation/b.py": "from gpt2_tf2.generation import a\n",
        },
    )
    found = violations(root)
    assert "gpt2_tf2.core.model imports gpt2_tf2.generation.loop (upward or sideways)" in found
    assert "gpt2_tf2.tokenizer.bpe imports gpt2_tf2.core.model (upward or sideways)" in found
    assert any(v.startswith("cycle:") and "generation.a" in v for v in found)
    assert any(v.startswith("cycle:") and "core.model" in v for v in found)
    assert len(found) == 4, found
