"""`python -m gpt2_tf2.attention --prompt "..." --out attention.html`: what attention looks at.

Writes one self-contained HTML page (no network: the data and the script are inline, the
template is `attention.html` beside this file) where one picks a layer and a head and sees, as
in tensor2tensor's attention view, lines from each token to the tokens it attends to; and, with
--png, a heat map of every head of one layer (matplotlib, the optional extra [attention]).
"""

from __future__ import annotations

import json
import os
from importlib import resources

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError

MARK = "gpt2_tf2.attention"  # in every file written here: only such a file may be replaced


def attention(
    prompt=None,
    prompt_file=None,
    out="attention.html",
    png=None,
    layer=-1,
    model_name="124M",
    models_dir="models",
    run_name=None,
    checkpoint_dir="checkpoint",
    offline=False,
    verbose=False,
):
    """Show what each token of a text attends to, in every layer and head.

    Args:
      prompt: the text to look at (a sentence or two reads best).
      prompt_file: a file with the text instead; '-' reads standard input.
      out: the HTML page to write; a new file, or a page written here before.
      png: also write a heat map of every head of --layer to this PNG file (needs matplotlib:
        pip install 'gpt2_tf2[attention]').
      layer: the layer the heat map shows (0-based; -1 = the last); the page shows all.
      model_name: release name under models_dir (124M, ...) or a model directory (demo).
      models_dir: directory holding the release directories.
      run_name: look at a fine-tuning run's newest checkpoint instead of model_name.
      checkpoint_dir: where run directories live.
      offline: never download; a release missing from models_dir is an error.
      verbose: show TensorFlow's log messages.
    """
    runner.configure_logging(verbose)
    if (prompt is None) == (prompt_file is None):
        raise UserError("give the text with --prompt or --prompt_file (one of them)")
    text = str(prompt) if prompt is not None else runner.read_prompt_file(str(prompt_file))
    out = str(out)
    check_target(out)
    if png is not None:
        png = str(png)
        check_target(png)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise UserError(f"--layer must be an integer, got {layer!r}")
    lm = runner.load_model(model_name, models_dir, offline, run_name, checkpoint_dir, verbose)
    tokens = lm.encode(text)
    if not tokens:
        raise UserError("the text is empty")
    if len(tokens) > lm.hparams.n_ctx:
        raise UserError(
            f"the text is {len(tokens)} tokens, more than the model's context of "
            f"{lm.hparams.n_ctx}; shorten it"
        )
    if not -lm.hparams.n_layer <= layer < lm.hparams.n_layer:
        raise UserError(f"--layer must be in 0..{lm.hparams.n_layer - 1} (or -1), got {layer}")
    from gpt2_tf2.core.attention_maps import attention_maps
    from gpt2_tf2.files import write_atomically

    maps = attention_maps(lm.model, tokens)  # [layers, heads, seq, seq]
    labels = [label(lm.encoder.decode_bytes([t])) for t in tokens]
    name = lm.model_dir or str(model_name)
    write_atomically(out, page(maps, labels, os.path.basename(os.path.normpath(name))))
    print(f"wrote {out}: {len(tokens)} tokens, {maps.shape[0]} layers x {maps.shape[1]} heads")
    if png is not None:
        heat_map(maps[layer], labels, layer % maps.shape[0], png)
        print(f"wrote {png}")
    return None


def label(piece: bytes) -> str:
    """A token as the page shows it: spaces kept visible, control characters escaped."""
    text = piece.decode("utf-8", errors="replace")
    return text.replace(" ", "\u00a0").replace("\n", "\\n").replace("\t", "\\t") or "\u2205"


def page(maps, labels: list[str], model: str) -> str:
    layers, heads, seq, _ = maps.shape
    weights = [
        [
            [[round(float(w), 4) for w in maps[li, h, i, : i + 1]] for i in range(seq)]
            for h in range(heads)
        ]
        for li in range(layers)
    ]  # only j <= i: the rest is 0 (causal)
    data = {
        "model": model,
        "tokens": labels,
        "layers": layers,
        "heads": heads,
        "weights": weights,
        "labelWidth": 8 * max(len(t) for t in labels) + 12,
    }
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # inside <script>
    title = "".join(labels).replace("\u00a0", " ")[:60]
    template = resources.files("gpt2_tf2.cli").joinpath("attention.html").read_text("utf-8")
    return template.replace("__TITLE__", html_escape(title)).replace("__DATA__", blob)


def html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def check_target(path: str) -> None:
    """A new file, or one this command wrote (it carries MARK): never anything else."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; name the file to write")
    if os.path.exists(path):
        with open(path, "rb") as f:
            head = f.read(4096)
        if MARK.encode() not in head:
            raise UserError(
                f"{path}: exists and was not written by gpt2_tf2.attention; choose "
                f"another name (nothing was replaced)"
            )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: directory {parent} does not exist")


def heat_map(maps, labels: list[str], layer: int, path: str) -> None:
    """Every head of one layer as a heat map (queries down, keys across), one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--png needs matplotlib: pip install 'gpt2_tf2[attention]'") from None
    heads, seq = maps.shape[0], maps.shape[1]
    cols = min(heads, 4)
    rows = -(-heads // cols)
    size = max(2.5, 0.18 * seq)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(maps[h], cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        ticks = range(seq) if seq <= 40 else []
        ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=7)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=100, metadata={"Software": MARK})
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


attention.positional = ()  # the text is --prompt (cli/flags.py)


def main(argv=None):
    runner.run(attention, argv, name="gpt2_tf2.attention")
