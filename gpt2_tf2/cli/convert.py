"""`python -m gpt2_tf2.convert from-hf|to-hf`: models in Hugging Face's layout in and out
(`formats/huggingface.py`), e.g. ruGPT-3, distilgpt2 or DialoGPT in; a model fine-tuned here out
to transformers' `from_pretrained`."""

from __future__ import annotations

import os
import shutil
import tempfile

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError
from gpt2_tf2.files import check_new_dir


def from_hf(hf_dir=None, out=None, verbose=False):
    """Convert a Hugging Face GPT-2 directory into a model directory in OpenAI's layout.

    The directory is what transformers' save_pretrained writes (or a download of a model's
    repository): config.json, model.safetensors (or its shards, or pytorch_model.bin with torch
    installed), vocab.json and merges.txt with the tokenizer's special tokens. Every command
    here then uses the result: sample, score, train, export, convert to-hf.

    Args:
      hf_dir: the Hugging Face directory; or a repository id (sberbank-ai/rugpt3small_based_on_gpt2)
        when the huggingface_hub package is installed, downloaded first.
      out: the model directory to write, new or empty (e.g. models/rugpt3small).
      verbose: show TensorFlow's log messages.
    """
    if hf_dir is None or out is None:
        raise UserError("convert from-hf needs HF_DIR and --out DIR")
    hf_dir, out = locate(str(hf_dir)), str(out)  # before TensorFlow loads: a download fails fast
    runner.configure_logging(verbose)
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"{out}: not empty; convert into a new or empty directory")
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.formats import huggingface, openai

    hparams, tensors, vocab, merges, specials, eos = huggingface.read_hf_dir(hf_dir)
    model = GPT2(hparams, seed=None)
    for name, var in model.named_variables().items():
        var.assign(tensors[name])
    scratch = tempfile.mkdtemp(prefix="gpt2_tf2-convert-")
    try:
        files = huggingface.write_vocabulary(scratch, vocab, merges, specials, eos)
        openai.write_model_dir(model, hparams, files, out, "convert from-hf")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"wrote {out}: {hparams.num_params() / 1e6:.1f}M parameters ({hparams.n_layer} layers, "
        f"{hparams.n_embd} wide, context {hparams.n_ctx}, {len(vocab)} tokens; end of text "
        f"{eos!r})"
    )
    return None


def locate(hf_dir: str) -> str:
    """A local directory as it is; a repository id downloaded with huggingface_hub if installed."""
    if os.path.isdir(hf_dir):
        return hf_dir
    looks_like_id = hf_dir.count("/") == 1 and not hf_dir.startswith((".", "/"))
    if not looks_like_id:
        raise UserError(f"{hf_dir}: no such directory")
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError:
        raise UserError(
            f"{hf_dir}: not a directory; to fetch that repository, pip install huggingface_hub "
            f"(then this command downloads it), or: huggingface-cli download {hf_dir} "
            f"--local-dir DIR"
        ) from None
    _check_hub_reachable(hf_dir)
    try:
        # The configuration, the tokenizer and one copy of the weights: safetensors where the
        # repository has them, else pytorch_model.bin (older uploads such as ruGPT-3's).
        files = list_repo_files(hf_dir)
        weights = [f for f in files if f.endswith(".safetensors")]
        weights = weights or [f for f in files if f == "pytorch_model.bin"]
        return snapshot_download(hf_dir, allow_patterns=["*.json", "*.txt", *weights])
    except Exception as e:  # the hub's errors: not found, no network, gated
        raise UserError(f"{hf_dir}: cannot download ({str(e).splitlines()[0]})") from None


def to_hf(
    model_name=None,
    out=None,
    models_dir="models",
    run_name=None,
    checkpoint_dir="checkpoint",
    verbose=False,
):
    """Write a model in Hugging Face's layout, for transformers' from_pretrained.

    model.safetensors, config.json, generation_config.json (its end-of-text id), vocab.json,
    merges.txt, tokenizer_config.json and special_tokens_map.json: the directory loads with
    GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained.

    Args:
      model_name: a model directory, or a release name under models_dir.
      out: the directory to write, new or empty.
      models_dir: where release names are looked up.
      run_name: instead, the newest checkpoint of a fine-tuning run.
      checkpoint_dir: where run directories live.
      verbose: show TensorFlow's log messages.
    """
    runner.configure_logging(verbose)
    if (model_name is None and run_name is None) or out is None:
        raise UserError("convert to-hf needs MODEL (or --run_name) and --out DIR")
    out = str(out)
    check_new_dir(out)  # before the model is read
    from gpt2_tf2.formats import huggingface
    from gpt2_tf2.formats import model_dir as formats

    directory = formats.locate(str(model_name or ""), models_dir, False, run_name, checkpoint_dir)
    opened = formats.open_model_dir(directory)
    files = opened.vocabulary_files
    if "encoder.json" not in files:
        raise UserError(
            f"{directory}: a SentencePiece vocabulary; transformers' GPT-2 tokenizer is a "
            f"byte-level BPE (encoder.json + vocab.bpe), so to-hf cannot write it"
        )
    encoder = opened.encoder
    eos = None if encoder.eot_token is None else encoder.decoder[encoder.eot_token]
    weights = formats.read_weights(opened)  # a weight at a time, as written (SafetensorsFile)
    content = huggingface.hf_files(
        opened.hparams, weights, directory, list(encoder.special_tokens), eos
    )
    write_new_dir(out, content)
    print(f"wrote {out}: {', '.join(sorted(content))}")
    return None


def write_new_dir(out: str, content: dict) -> None:
    """Write the files into `out` (new or empty) all at once (`replace_into`)."""
    from gpt2_tf2.files import replace_into
    from gpt2_tf2.formats import huggingface

    needed = sum(len(v) if isinstance(v, str) else getattr(v, "size", 0) for v in content.values())
    replace_into(out, lambda tmp: huggingface.write_files(tmp, content), needed)


def _check_hub_reachable(repo_id: str, timeout: float = 3.0) -> None:
    """Offline, huggingface_hub retries for half a minute, printing a line per retry: a quick
    TCP connection to the hub ($HF_ENDPOINT, else huggingface.co) says at once whether it can
    be reached. Skipped under HF_HUB_OFFLINE, where the hub reads its own cache."""
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise UserError(
            f"{repo_id}: cannot download: {host}:{port} cannot be reached "
            f"({getattr(e, 'strerror', None) or e}); connect to the network, or download the "
            f"repository elsewhere and give its directory"
        ) from None


from_hf.positional = ("hf_dir",)  # what the command takes by position (cli/flags.py)
from_hf.uses_tensorflow = False  # it loads TensorFlow itself, once the repository is found
to_hf.positional = ("model_name",)
SUBCOMMANDS = {"from-hf": from_hf, "to-hf": to_hf}


def main(argv=None):
    runner.run_subcommand(SUBCOMMANDS, argv, "gpt2_tf2.convert")
