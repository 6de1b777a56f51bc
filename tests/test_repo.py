"""The repository's promises: CI runs the README's test command verbatim."""

import os
import re

from conftest import REPO


def readme_test_command():
    lines = open(os.path.join(REPO, "README.md"), encoding="utf-8").read().splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("<!-- test-command"))
    assert lines[marker + 1] == "```sh"
    return lines[marker + 2]


def test_ci_runs_readme_test_command():
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read().splitlines()
    # Verbatim, inside `{ ...; } || exit 1` (a failure in a && list does not trip set -e).
    assert f"{{ {readme_test_command()}; }} || exit 1" in ci


def test_quickstart_has_two_commands():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = quickstart.split("```sh\n")[1:]
    assert len(blocks) == 2
    assert all(len(b.split("```")[0].strip().splitlines()) == 1 for b in blocks)


def markdown_files():
    tops = ["README.md", "tests/README.md", "models/demo/README.md"]
    docs = sorted(
        os.path.relpath(os.path.join(folder, n), REPO)
        for folder, _, names in os.walk(os.path.join(REPO, "docs"))
        for n in names
        if n.endswith(".md")
    )  # the guides, and the benchmark pages below docs/benchmarks/
    return tops + docs


def test_relative_links_lead_somewhere():
    """Every relative link in the README and the guides names a file of the repository (the
    README is a landing page: its links are the way in)."""
    broken = []
    for name in markdown_files():
        path = os.path.join(REPO, name)
        text = open(path, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), target))):
                broken.append(f"{name}: {target}")
    assert broken == []


def test_the_readme_is_a_landing_page():
    """What a newcomer reads in five minutes; the usage guides live in docs/."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 120
    linked = set(re.findall(r"\]\(docs/([^)#]+)\)", text))
    guides = {n for n in os.listdir(os.path.join(REPO, "docs")) if n.endswith(".md")}
    for guide in ("sampling.md", "fine-tuning.md", "vocabulary.md", "huggingface.md"):
        assert guide in linked and guide in guides


def test_every_script_flag_has_help():
    """bench/ and tools/ scripts parse their flags with argparse: each flag says in --help what
    it does (fire's commands get theirs from the config objects, tested with the commands)."""
    import ast

    missing = []
    for folder in ("bench", "tools"):
        for name in sorted(os.listdir(os.path.join(REPO, folder))):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(REPO, folder, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                call = isinstance(node, ast.Call) and getattr(node.func, "attr", "")
                if call == "add_argument" and not any(k.arg == "help" for k in node.keywords):
                    missing.append(f"{folder}/{name}:{node.lineno}")
    assert not missing, f"flags without help: {missing}"
