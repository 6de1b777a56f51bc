"""`python -m gpt2_tf2.download 124M ...`: fetch OpenAI's releases (`formats/download.py`)."""

from __future__ import annotations

import os

from gpt2_tf2.cli import runner
from gpt2_tf2.core.hparams import canonical_name
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats.download import APPROX_SIZE, download_model


def download(
    *model_names, models_dir="models", base_url=None, timeout=60.0, verify=False, verbose=False
):
    """Download OpenAI's GPT-2 releases (the seven files of each) into models_dir.

    A file already there is kept when its size is the server's (asked with a HEAD request), else
    fetched again; partial ones are resumed, so an interrupted download is finished by running
    the same command again. Every file fetched is checked against the MD5 the server sends.

    Args:
      model_names: one or more of 124M, 355M, 774M, 1558M (117M and 345M are aliases).
      models_dir: where to put them; each release goes to models_dir/NAME.
      base_url: where the releases live (default: OpenAI's public storage, or the
        GPT2_TF2_BASE_URL environment variable); files are fetched from BASE_URL/NAME/FILE.
      timeout: seconds without data before giving up.
      verify: also check the MD5 of files already there (reads them all), fetching again any
        that differ: to re-check a directory.
      verbose: unused here; accepted for symmetry with the other commands.
    """
    del verbose
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise UserError(f"--timeout must be a number of seconds > 0, got {timeout!r}")
    if not model_names:
        raise UserError("name at least one release: 124M, 355M, 774M or 1558M")
    for name in model_names:
        release = canonical_name(str(name))
        print(
            f"downloading {name} (about {APPROX_SIZE.get(release, '?')}) to "
            f"{os.path.join(models_dir, release or str(name))}"
        )
        download_model(str(name), models_dir, base_url, float(timeout), verify=bool(verify))
    return None


download.positional = ("model_names",)  # what the command takes by position (cli/flags.py)


def main(argv=None):
    runner.run(download, argv, name="gpt2_tf2.download")
