"""`python -m gpt2_tf2.download 124M ...`: fetch OpenAI's releases (`formats/download.py`)."""

from __future__ import annotations

import os

from gpt2_tf2.cli import runner
from gpt2_tf2.core.hparams import canonical_name
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats.download import APPROX_SIZE, download_model


def download(*model_names, models_dir="models", base_url=None, timeout=60.0, verbose=False):
    """Download OpenAI's GPT-2 releases (the seven files of each) into models_dir.

    Complete files are skipped and partial ones resumed, so an interrupted download is finished
    by running the same command again.

    Args:
      model_names: one or more of 124M, 355M, 774M, 1558M (117M and 345M are aliases).
      models_dir: where to put them; each release goes to models_dir/NAME.
      base_url: where the releases live (default: OpenAI's public storage, or the
        GPT2_TF2_BASE_URL environment variable); files are fetched from BASE_URL/NAME/FILE.
      timeout: seconds without data before giving up.
      verbose: unused here; accepted for symmetry with the other commands.
    """
    del verbose
    if not model_names:
        raise UserError("name at least one release: 124M, 355M, 774M or 1558M")
    for name in model_names:
        release = canonical_name(str(name))
        print(
            f"downloading {name} (about {APPROX_SIZE.get(release, '?')}) to "
            f"{os.path.join(models_dir, release or str(name))}"
        )
        download_model(str(name), models_dir, base_url, float(timeout))
    return None


def main(argv=None):
    runner.run(download, argv, name="gpt2_tf2.download")
