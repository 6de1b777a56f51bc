"""`TrainConfig`: every setting of a training run, with its default and its help, in one place.

nshepperd's `train.py` flags and defaults (`--batch_size 1`, `--learning_rate 2e-5`, ...) plus
ours. The `train` command's signature and `--help` are built from these fields, the `Trainer`
reads the step's settings from it, and `validate()` is the one check of their values.
"""

from __future__ import annotations

import dataclasses

from gpt2_tf2.errors import UserError
from gpt2_tf2.files import check_run_name
from gpt2_tf2.generation.checks import QUANTIZED, check_seed

OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")  # training/optimizers.py makes each
MIXED_PRECISION = ("none", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
STRATEGIES = ("one_device", "mirrored", "multi_worker")  # training/distribute.py


def flag(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str | None = flag(
        None, "text file, directory, glob, or .npz from `gpt2_tf2.encode` (required)."
    )
    model_name: str = flag(
        "124M", "base model: release name under models_dir or a model directory."
    )
    models_dir: str = flag("models", "directory holding the release directories.")
    combine: int = flag(
        50000, "when encoding text, join files into chunks of at least this many characters."
    )
    encoding: str = flag("utf-8", "the text files' encoding.")
    batch_size: int = flag(
        1, "windows per micro-batch; under a --strategy, the global batch, split across replicas."
    )
    learning_rate: float = flag(0.00002, "peak learning rate.")
    accumulate_gradients: int = flag(
        1,
        "micro-batches averaged into each update (effective batch = batch_size * "
        "accumulate_gradients).",
    )
    memory_saving_gradients: bool = flag(
        False,
        "recompute each block in the backward pass: a third less memory, up to a third slower "
        "(docs/benchmarks/training-memory.md).",
    )
    only_train_transformer_layers: bool = flag(False, "train the blocks only (not wte, wpe, ln_f).")
    optimizer: str = flag("adam", "adam (as nshepperd's), adamw, sgd or adafactor (least memory).")
    noise: float = flag(
        0.0, "probability of replacing each input token by a random one (regularisation)."
    )
    dropout: float = flag(
        0.0,
        "probability of zeroing each activation of the embeddings and the residual branches "
        "while training (regularisation for small datasets; Hugging Face's GPT-2 uses 0.1); "
        "0 = none, as OpenAI's and nshepperd's code.",
    )
    top_k: int = flag(40, "top-k for the samples printed during training (0 = off).")
    top_p: float = flag(0.0, "top-p for those samples (0 or 1 = off).")
    restore_from: str = flag(
        "latest",
        "'latest' (this run's newest checkpoint, else the base model), 'fresh' (the base model), "
        "or a path: a training checkpoint, a run directory or a model directory.",
    )
    run_name: str = flag("run1", "the run; checkpoints go to checkpoint_dir/run_name.")
    overwrite: bool = flag(
        False,
        "start the run over when --restore_from is not 'latest' and the run already has "
        "checkpoints: they, run.json and log.tsv are deleted first. Without it that is refused.",
    )
    sample_every: int = flag(100, "print and save samples every N steps; 0 = never.")
    sample_length: int = flag(1023, "tokens per sample (at most the model's context).")
    sample_num: int = flag(1, "samples each time.")
    save_every: int = flag(
        1000, "save a checkpoint every N steps; 0 = only on interrupt and at the end."
    )
    val_dataset: str | None = flag(
        None, "dataset for validation loss; default: the last 5% of --dataset held out."
    )
    val_batch_size: int = flag(2, "windows per validation batch.")
    val_batch_count: int = flag(40, "validation batches (a fixed set, the same every time).")
    val_every: int = flag(0, "compute validation loss every N steps; 0 = never.")
    steps: int | None = flag(
        None,
        "stop when the global step reaches N (a resumed run counts steps already done); "
        "default: until interrupted.",
    )
    warmup_steps: int = flag(0, "linear learning-rate warm-up over the first N steps.")
    lr_schedule: str = flag("constant", "constant, or cosine (decays to 0 at --steps).")
    grad_clip: float = flag(0.0, "clip gradients to this global norm; 0 = off.")
    weight_decay: float = flag(0.01, "decoupled weight decay for adamw.")
    sequence_length: int | None = flag(
        None, "tokens per training window; default the model's context (1024)."
    )
    mixed_precision: str = flag(
        "none",
        "none (float32), bf16 or fp16 (with dynamic loss scaling): compute in 16 bits with "
        "float32 weights; layer norms, softmax and the loss stay float32.",
    )
    seed: int | None = flag(
        None,
        "seed of the data order and noise; default random for a new run, the run's own seed "
        "when resuming.",
    )
    checkpoint_dir: str = flag("checkpoint", "where run directories live.")
    sample_dir: str = flag("samples", "samples go to sample_dir/run_name/samples-STEP.")
    offline: bool = flag(False, "never download the base model.")
    strategy: str = flag(
        "one_device",
        "one_device (one GPU or the CPU), mirrored (every local GPU, or the --num_cpu_devices "
        "logical CPUs) or multi_worker (one process per machine, cluster from TF_CONFIG): "
        "--batch_size is the global batch, split across the replicas (docs/distributed.md).",
    )
    num_cpu_devices: int = flag(
        1, "split the CPU into N logical devices, to try a strategy without GPUs."
    )

    def validate(self) -> None:
        """One clear line for the first impossible value, before any work is done."""
        _check(
            self.dataset is not None, "`dataset` is required (a text file, directory, glob or .npz)"
        )
        for name, low in MINIMUM.items():
            value = getattr(self, name)
            _check(_is_int(value, low), f"`{name}` must be an integer >= {low}, got {value!r}")
        _check(
            self.steps is None or _is_int(self.steps, 1),
            f"`steps` must be a positive integer, got {self.steps!r}",
        )
        _check(
            _is_number(self.learning_rate) and self.learning_rate > 0,
            f"`learning_rate` must be > 0, got {self.learning_rate!r}",
        )
        _check(
            self.optimizer in OPTIMIZERS,
            f"`optimizer` must be {', '.join(OPTIMIZERS[:-1])} or {OPTIMIZERS[-1]}, "
            f"got {self.optimizer!r}",
        )
        _check(self.lr_schedule in LR_SCHEDULES, "`lr_schedule` must be constant or cosine")
        _check(self.lr_schedule != "cosine" or self.steps, "`lr_schedule` cosine needs `steps`")
        _check(_is_number(self.noise) and 0 <= self.noise < 1, "`noise` must be in [0, 1)")
        _check(_is_number(self.dropout) and 0 <= self.dropout < 1, "`dropout` must be in [0, 1)")
        _check(_is_number(self.grad_clip) and self.grad_clip >= 0, "`grad_clip` must be >= 0")
        _check(_is_int(self.top_k, 0), f"`top_k` must be an integer >= 0, got {self.top_k!r}")
        _check(
            self.mixed_precision not in QUANTIZED,
            f"{self.mixed_precision} is for inference (sampling and scoring with dtype "
            f"{self.mixed_precision}, on the tflite backend); training runs in float32, or "
            "`mixed_precision` bf16 or fp16",
        )
        _check(
            self.mixed_precision in MIXED_PRECISION,
            f"`mixed_precision` must be none, bf16 or fp16, got {self.mixed_precision!r}",
        )
        _check(
            self.strategy in STRATEGIES,
            f"`strategy` must be one_device, mirrored or multi_worker, got {self.strategy!r}",
        )
        _check(_is_number(self.top_p) and 0 <= self.top_p <= 1, "`top_p` must be in [0, 1]")
        check_seed(self.seed)  # one rule for seeds, sampling's too
        _check(
            _is_run_name(self.run_name),
            f"`run_name` must be one directory name under `checkpoint_dir` (no '/', not '.' "
            f"or '..'), got {self.run_name!r}",
        )

    def check_sequence_length(self, n_ctx: int) -> int:
        """The window length for a model of context n_ctx (default: all of it)."""
        seq_len = n_ctx if self.sequence_length is None else self.sequence_length
        _check(
            _is_int(seq_len, 1) and seq_len <= n_ctx,
            f"`sequence_length` must be in 1..{n_ctx}, got {self.sequence_length!r}",
        )
        return seq_len


# The smallest value of each integer setting.
MINIMUM = {
    "batch_size": 1,
    "accumulate_gradients": 1,
    "sample_every": 0,
    "sample_num": 1,
    "save_every": 0,
    "val_batch_size": 1,
    "val_batch_count": 1,
    "val_every": 0,
    "warmup_steps": 0,
    "sample_length": 1,
    "combine": 1,
    "num_cpu_devices": 1,
}


def _check(cond, message):
    if not cond:
        raise UserError(message)


def _is_int(x, low=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _is_run_name(x):
    try:
        check_run_name(x)
    except UserError:
        return False
    return True


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)
