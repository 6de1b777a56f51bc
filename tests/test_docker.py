"""Docker images, checked without a Docker engine: lint, pinned versions within the supported range,
and the commands the images run (the console entry point) exercised here."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_cli

DOCKER = os.path.join(REPO, "docker")
VERSIONS = json.load(open(os.path.join(DOCKER, "versions.json"), encoding="utf-8"))
DOCKERFILES = sorted(f for f in os.listdir(DOCKER) if f.startswith("Dockerfile"))


def version(text):
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def supported_tensorflow():
    line = next(
        x for x in open(os.path.join(REPO, "requirements.txt")) if x.startswith("tensorflow")
    )
    return version(line.split(">=")[1])


def supported_python():
    text = open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8").read()
    return version(re.search(r'requires-python = ">=([\d.]+)"', text).group(1))


def test_every_dockerfile_is_recorded():
    assert DOCKERFILES == sorted(VERSIONS) == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name):
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run([hadolint, os.path.join(DOCKER, name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_versions_are_supported(name):
    text = open(os.path.join(DOCKER, name), encoding="utf-8").read()
    recorded = VERSIONS[name]
    assert re.search(r"^FROM (\S+)$", text, re.M).group(1) == recorded["base"]
    assert ":latest" not in recorded["base"] and ":" in recorded["base"]  # pinned tag
    assert version(recorded["tensorflow"]) >= supported_tensorflow()
    assert version(recorded["python"]) >= supported_python()
    # TensorFlow 2.17, the images' version, ships wheels for Python 3.9 to 3.12.
    assert (3, 9) <= version(recorded["python"]) <= (3, 12)
    if "tensorflow-cpu==" in text:
        assert re.search(r"tensorflow-cpu==([\d.]+)", text).group(1) == recorded["tensorflow"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_models_are_mounted_not_baked_in(name):
    text = open(os.path.join(DOCKER, name), encoding="utf-8").read()
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    # The one exception: the small demo model, for the CPU image's offline smoke command.
    assert all(c == "models/demo" or "models" not in c for c in copied)
    assert all("checkpoint" not in c for c in copied)
    assert 'ENTRYPOINT ["gpt2_tf2"]' in text
    ignore = open(os.path.join(REPO, ".dockerignore"), encoding="utf-8").read().split()
    assert {"models/*", "!models/demo", "checkpoint", ".venv"} <= set(ignore)


@pytest.mark.e2e
def test_entrypoint_command_as_in_the_image(tiny_model_dir, tmp_path):
    """`docker run IMAGE sample ...` runs the `gpt2_tf2` console script with
    GPT2_TF2_SHOW_DEVICE=1 from /workspace: the same here, from the installed package."""
    script = os.path.join(os.path.dirname(sys.executable), "gpt2_tf2")
    assert os.path.exists(script), "pip install -e . installs the gpt2_tf2 console script"
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "124M")
    env = {**os.environ, "GPT2_TF2_SHOW_DEVICE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run(
        [script, "sample", "--model_name", "124M", "--length", "3", "--offline"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "SAMPLE 1" in r.stdout
    assert r.stderr.count("device: ") == 1 and "CPU" in r.stderr
    help_text = run_cli(["-m", "gpt2_tf2", "--help"]).stdout
    for command in ("sample", "score", "download", "encode", "train", "export", "vocab", "init"):
        assert command in help_text


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_can_serve(name):
    """Each image installs the [serve] extra's packages, pinned, and exposes the server's port."""
    text = open(os.path.join(DOCKER, name), encoding="utf-8").read()
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        extra = re.search(r"^serve = \[(.*)\]$", f.read(), re.M).group(1)  # one line
    packages = re.findall(r'"([A-Za-z0-9_.-]+)', extra)
    assert packages == ["starlette", "uvicorn"]
    for package in packages:
        assert re.search(rf'"{package}==[0-9.]+"', text), package
    assert re.search(r"^EXPOSE 8000$", text, re.M)
