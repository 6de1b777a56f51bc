"""`python -m gpt2_tf2.sample`: unconditional, conditional and interactive sampling.

One command for what openai/gpt-2 split into `generate_unconditional_samples.py` and
`interactive_conditional_samples.py`, with their flags, defaults and output format
(`==== SAMPLE n ====` headers, continuation only). The decoding flags, their defaults and help
are `generation.config.GenerationConfig`'s fields; the command's own are `SampleFlags`'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys

from gpt2_tf2.cli import flags, runner
from gpt2_tf2.errors import UserError, flag_spelling
from gpt2_tf2.generation.checks import check_dtype
from gpt2_tf2.generation.config import NAMES, GenerationConfig

HEADER = "=" * 40 + " SAMPLE {} " + "=" * 40
FOOTER = "=" * 80
PROMPT = "Model prompt >>> "


flag = runner.flag


@dataclasses.dataclass(frozen=True)
class SampleFlags(runner.ModelFlags):
    """The command's flags that are not decoding settings: the model (`runner.ModelFlags`),
    the prompts, the output."""

    prompt: str | None = flag(None, "text to continue.")
    prompt_file: str | None = flag(None, "file whose text to continue; '-' reads standard input.")
    prompts_file: str | None = flag(
        None,
        "file of prompts, one per line ('-': standard input; blank lines skipped): nsamples "
        "samples of each, shown as an interactive session shows them. With --batch_size, rows of "
        "different prompts run together (left-padded and masked: each sample is what its prompt "
        "alone gives).",
    )
    interactive: bool = flag(
        False, "ask for prompts in a loop ('Model prompt >>> '), as the original script did."
    )
    truncate: str | None = flag(
        None,
        "cut each sample before the first occurrence of this text (gpt-2-simple's name), e.g. "
        "'<|endoftext|>'.",
    )
    include_prefix: bool = flag(
        False, "print the prompt in front of each sample (as gpt-2-simple does)."
    )
    destination_path: str | None = flag(
        None,
        "write the samples to this new file instead of printing them, each followed by a "
        "newline and sample_delim (gpt-2-simple's generate_to_file).",
    )
    sample_delim: str = flag("=" * 20 + "\n", "with destination_path: what follows each sample.")
    verbose: bool = flag(False, "show TensorFlow's log messages.")


def sample(*args, **kwargs):
    bound = sample.__signature__.bind(*args, **kwargs)  # fire passes flags by position
    bound.apply_defaults()
    values = dict(bound.arguments)
    config = GenerationConfig(**{name: values.pop(name) for name in NAMES})
    opts = SampleFlags(**values)
    config.validate()  # plain Python: bad flags are answered before TensorFlow loads
    prompt, prompts = check_flags(opts, config)
    runner.configure_tensorflow(opts.verbose, opts.dtype, opts.backend)
    check_before_loading(opts, config, [prompt] if prompt else prompts)
    lm = runner.load_chosen(opts, opts.verbose)
    if prompts:
        print_prompts(lm, prompts, config, opts)
    elif opts.interactive:
        config.validate(lm.hparams.n_ctx, 1)
        interact(lm, config, opts)
    else:
        print_samples(lm, prompt, config, opts)


def check_flags(opts: SampleFlags, config: GenerationConfig):
    """The flags that go together, checked before TensorFlow loads; returns (the prompt, or
    None: unconditional or interactive; the prompts of a --prompts_file, or None), both read
    here, so that a bad file is answered at once."""
    prompts = None
    if opts.prompts_file is not None:
        if opts.prompt is not None or opts.prompt_file is not None or opts.interactive:
            raise UserError("--prompts_file gives the prompts; drop --prompt/--prompt_file/-i")
        if config.nsamples == 0:
            raise UserError("nsamples=0 (sample until interrupted) is for unconditional sampling")
        prompts = read_prompts(opts.prompts_file)
    prompt = read_prompt(opts.prompt, opts.prompt_file, opts.interactive, config.nsamples)
    check_dtype(opts.dtype, opts.backend)
    if opts.destination_path is not None:
        if opts.interactive or config.nsamples == 0:
            raise UserError("--destination_path needs a fixed --nsamples and no --interactive")
        from gpt2_tf2.generation import texts

        texts.check_destination(str(opts.destination_path))
    return prompt, prompts


def check_before_loading(opts: SampleFlags, config: GenerationConfig, prompts) -> None:
    """A model already on disk: the prompts' lengths (`prompts`: a list, or None) and the
    batch's memory checked against its hparams before its weights are read (a release about to
    be downloaded is checked after)."""
    from gpt2_tf2.core.hparams import WEIGHT_BYTES
    from gpt2_tf2.generation import language_model as api
    from gpt2_tf2.generation.checks import cache_columns, check_memory

    known = api.peek(opts.model_name, opts.models_dir, opts.run_name, opts.checkpoint_dir)
    if known is None:
        return
    hparams, encoder = known
    prompt_len = max((len(api.encode_text(encoder, t)) for t in prompts or []), default=0)
    resolved = config.validate(hparams.n_ctx, prompt_len or (1 if opts.interactive else 0))
    # Interactive prompts are not known yet: as long as the context allows.
    columns = hparams.n_ctx
    if not opts.interactive:
        columns = cache_columns(hparams.n_ctx, prompt_len, resolved.length)
    weights = hparams.num_params() * WEIGHT_BYTES.get(opts.dtype, 4)
    check_memory(weights, hparams, config.batch_size or 1, columns)


def print_samples(lm, prompt, config, opts: SampleFlags, counter: int = 0) -> int:
    """Generate and print samples with the original's headers (or, with --destination_path,
    write them there); returns the updated counter. One sample at a time is printed as it is
    made (streamed)."""
    from gpt2_tf2.generation import texts

    if streamable(config, opts):
        return stream_samples(lm, prompt, config, opts, counter)
    written = []
    tokens = lm.encode(prompt) if prompt else []
    if config.beams:  # one batch of beams, found before it is printed
        with beam_bar() as progress:
            batches = list(lm.generate_tokens(tokens, config, beam_progress=progress))
    else:  # lazily: nsamples 0 is forever
        batches = lm.generate_tokens(tokens, config)
    for rows in batches:
        for row in rows:
            counter += 1
            text = texts.finish(prompt, lm.encoder.decode(row), opts.truncate, opts.include_prefix)
            if opts.destination_path:
                written.append(text)
                continue
            print(HEADER.format(counter))
            print(text, flush=True)
    if opts.destination_path:
        texts.write(opts.destination_path, written, opts.sample_delim)
        print(f"wrote {len(written)} samples to {opts.destination_path}")
    return counter


@contextlib.contextmanager
def beam_bar():
    """Beam search cannot stream: on a terminal, a bar of its steps on stderr meanwhile (the
    search stops early once no open beam can win, so the bar may end short of its length)."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=None, unit="step", desc="beam search", leave=False) as bar:

        def progress(done: int, length: int) -> None:
            bar.total = length
            bar.update(done - bar.n)

        yield progress


def streamable(config, opts: SampleFlags) -> bool:
    """One sample at a time, to the terminal, as sampled: printed while it is made."""
    return (
        (config.batch_size or 1) == 1
        and not config.beams
        and not opts.truncate
        and not opts.destination_path
    )


def stream_samples(lm, prompt, config, opts: SampleFlags, counter: int) -> int:
    """Print each sample's text as it is made; the same text as without streaming."""
    import secrets

    seed = secrets.randbits(31) if config.seed is None else config.seed
    one = dataclasses.replace(config, nsamples=1, seed=seed)
    index = 0
    while config.nsamples == 0 or index < config.nsamples:
        pieces = lm.stream(prompt, one, sample_index=index)
        first = next(pieces, "")  # a bad setting or prompt fails here, before the header
        counter += 1
        print(HEADER.format(counter))
        if opts.include_prefix and prompt:
            print(prompt, end="", flush=True)
        print(first, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print(flush=True)
        index += 1
    return counter


def read_prompts(prompts_file) -> list[str]:
    """The prompts of a --prompts_file: one per line (blank lines skipped), '-' for stdin."""
    text = runner.read_prompt_file(str(prompts_file))
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{prompts_file}: no prompts in it (one per line)")
    return prompts


def print_prompts(lm, prompts, config, opts: SampleFlags) -> None:
    """Each prompt's samples, as an interactive session would show them: the prompt after
    'Model prompt >>> ', its samples, a footer. Rows run batch_size at a time across prompts."""
    if streamable(config, opts):
        counter = 0
        for prompt in prompts:
            print(PROMPT + prompt)
            counter = print_samples(lm, prompt, config, opts, counter)
            print(FOOTER)
        return
    finished = lm.generate(  # prompt by prompt, as LanguageModel.generate orders a list
        prompts,
        config,
        truncate=opts.truncate,
        include_prefix=opts.include_prefix,
        destination_path=opts.destination_path,
        sample_delim=opts.sample_delim,
    )
    if opts.destination_path:
        print(f"wrote {len(finished)} samples to {opts.destination_path}")
        return
    per_prompt = len(finished) // len(prompts)
    for i, text in enumerate(finished):
        if i % per_prompt == 0:
            print(PROMPT + prompts[i // per_prompt])
        print(HEADER.format(i + 1))
        print(text, flush=True)
        if i % per_prompt == per_prompt - 1:
            print(FOOTER)


def read_prompt(prompt, prompt_file, interactive: bool, nsamples: int) -> str | None:
    """The prompt the flags give (None: unconditional or interactive), or a clear error."""
    if prompt is not None and prompt_file is not None:
        raise UserError("give --prompt or --prompt_file, not both")
    if interactive and (prompt is not None or prompt_file is not None):
        raise UserError("--interactive reads prompts itself; drop --prompt/--prompt_file")
    if prompt_file is not None:
        prompt = runner.read_prompt_file(str(prompt_file))
    if prompt is not None:
        prompt = str(prompt)
        if not prompt:
            raise UserError("--prompt is empty; omit it for unconditional samples")
    if nsamples == 0 and (prompt is not None or interactive):
        raise UserError("nsamples=0 (sample until interrupted) is for unconditional sampling only")
    return prompt


def interact(lm, config, opts: SampleFlags) -> None:
    """The original's loop: ask for a prompt, print its samples, until end of input."""
    counter = 0
    while True:
        try:
            raw_text = input(PROMPT)
            while not raw_text:
                print("Prompt should not be empty!")
                raw_text = input(PROMPT)
        except EOFError:
            print()
            return
        try:
            counter = print_samples(lm, raw_text, config, opts, counter)
        except UserError as e:  # e.g. a prompt too long: say so and ask again, as runner.run
            own = sample.__signature__.parameters
            print(f"error: {flag_spelling(str(e), own)}", file=sys.stderr)
            continue
        print(FOOTER)


sample.__signature__, sample.__doc__ = flags.command_signature(
    "Generate text from GPT-2.\n\nWithout a prompt, samples are unconditional (they start from "
    "<|endoftext|>). Each sample\nis printed after a '==== SAMPLE n ====' header, the "
    "continuation only.",
    [
        *flags.config_fields(SampleFlags)[:2],  # the model first, as before
        *flags.config_fields(GenerationConfig, defaults={"batch_size": 1}),
        *flags.config_fields(SampleFlags)[2:],
    ],
)
sample.uses_xla = True  # runner.run hides XLA's first-compilation log lines too
sample.configures_logging = True  # after checking its flags, before TensorFlow loads
sample.short = {"i": "interactive"}  # -i, as before --include_prefix also began with i
sample.positional = ()  # a prompt is --prompt; a bare word is refused, not taken as a model


def main(argv=None):
    runner.run(sample, argv, name="gpt2_tf2.sample")
