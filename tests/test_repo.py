"""The repository's promises: CI runs the README's test command verbatim."""

import os

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
