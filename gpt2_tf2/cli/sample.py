"""`python -m gpt2_tf2.sample`: unconditional, conditional and interactive sampling.

One command for what openai/gpt-2 split into `generate_unconditional_samples.py` and
`interactive_conditional_samples.py`, with their flags, defaults and output format
(`==== SAMPLE n ====` headers, continuation only).
"""

from __future__ import annotations

import contextlib
import sys

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError

HEADER = "=" * 40 + " SAMPLE {} " + "=" * 40
FOOTER = "=" * 80
PROMPT = "Model prompt >>> "


def print_samples(
    lm, prompt, settings: dict, nsamples: int, counter: int = 0, output: dict | None = None
) -> int:
    """Generate and print samples with the original's headers (or, with output's
    destination_path, write them there); returns the updated counter. One sample at a time is
    printed as it is made (streamed)."""
    from gpt2_tf2.generation import texts

    output = output or {}
    if streamable(settings, output):
        return stream_samples(lm, prompt, settings, nsamples, counter, output)
    written = []
    tokens = lm.encode(prompt) if prompt else []
    if settings.get("num_beams", 1) != 1:  # one batch of beams, found before it is printed
        with beam_bar() as progress:
            batches = list(
                lm.generate_tokens(tokens, nsamples=nsamples, beam_progress=progress, **settings)
            )
    else:  # lazily: nsamples 0 is forever
        batches = lm.generate_tokens(tokens, nsamples=nsamples, **settings)
    for rows in batches:
        for row in rows:
            counter += 1
            text = texts.finish(
                prompt, lm.encoder.decode(row), output.get("truncate"), output.get("include_prefix")
            )
            if output.get("destination_path"):
                written.append(text)
                continue
            print(HEADER.format(counter))
            print(text, flush=True)
    if output.get("destination_path"):
        texts.write(output["destination_path"], written, output["sample_delim"])
        print(f"wrote {len(written)} samples to {output['destination_path']}")
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


def streamable(settings: dict, output: dict) -> bool:
    """One sample at a time, to the terminal, as sampled: printed while it is made."""
    return (
        settings.get("batch_size", 1) == 1
        and settings.get("num_beams", 1) == 1
        and not output.get("truncate")
        and not output.get("destination_path")
    )


def stream_samples(lm, prompt, settings: dict, nsamples: int, counter: int, output: dict) -> int:
    """Print each sample's text as it is made; the same text as without streaming."""
    import secrets

    keys = ("length", "temperature", "top_k", "top_p", "stop_at_endoftext")
    keys += ("repetition_penalty", "no_repeat_ngram_size", "window_stride")
    chosen = {k: settings[k] for k in keys if k in settings}
    seed = settings.get("seed")
    seed = secrets.randbits(31) if seed is None else seed
    index = 0
    while nsamples == 0 or index < nsamples:
        pieces = lm.stream(prompt, seed=seed, sample_index=index, **chosen)
        first = next(pieces, "")  # a bad setting or prompt fails here, before the header
        counter += 1
        print(HEADER.format(counter))
        if output.get("include_prefix") and prompt:
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


def print_prompts(lm, prompts, settings: dict, nsamples: int, output: dict) -> None:
    """Each prompt's samples, as an interactive session would show them: the prompt after
    'Model prompt >>> ', its samples, a footer. Rows run batch_size at a time across prompts."""
    if streamable(settings, output):
        counter = 0
        for prompt in prompts:
            print(PROMPT + prompt)
            counter = print_samples(lm, prompt, settings, nsamples, counter, output)
            print(FOOTER)
        return
    destination = output.get("destination_path")
    finished = lm.generate(  # prompt by prompt, as LanguageModel.generate orders a list
        prompts,
        nsamples=nsamples,
        truncate=output.get("truncate"),
        include_prefix=output.get("include_prefix"),
        destination_path=destination,
        sample_delim=output["sample_delim"],
        **settings,
    )
    if destination:
        print(f"wrote {len(finished)} samples to {destination}")
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


def sample(
    model_name="124M",
    models_dir="models",
    seed=None,
    nsamples=1,
    batch_size=1,
    length=None,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    num_beams=1,
    num_return_sequences=1,
    length_penalty=1.0,
    early_stopping=False,
    window_stride=None,
    truncate=None,
    include_prefix=False,
    destination_path=None,
    sample_delim="=" * 20 + "\n",
    prompt=None,
    prompt_file=None,
    prompts_file=None,
    interactive=False,
    stop_at_endoftext=False,
    run_name=None,
    checkpoint_dir="checkpoint",
    offline=False,
    dtype="float32",
    backend=None,
    verbose=False,
):
    """Generate text from GPT-2.

    Without a prompt, samples are unconditional (they start from <|endoftext|>). Each sample is
    printed after a '==== SAMPLE n ====' header, the continuation only.

    Args:
      model_name: release name under models_dir (124M, 355M, 774M, 1558M; 117M and 345M are
        aliases) or a path to a model directory in OpenAI's layout.
      models_dir: directory holding the release directories.
      seed: integer seed; the same seed gives the same samples. Default: random.
      nsamples: number of samples; 0 = keep sampling until interrupted (unconditional only).
      batch_size: samples computed at once (faster per sample, more memory).
      length: tokens to generate per sample; default n_ctx // 2 with a prompt, n_ctx without.
        Past the model's context (1024 for OpenAI's releases) a sliding window continues
        (--window_stride); beam search stays within the context.
      temperature: randomness; 1 samples the model's distribution, lower is more conservative,
        0 is greedy (always the most likely token).
      top_k: sample only among the k most likely tokens; 0 = no limit. 40 is a common choice.
      top_p: nucleus sampling: only among the most likely tokens whose probabilities add up to
        top_p, in (0, 1]; 1 = no limit. Combines with top_k.
      repetition_penalty: CTRL's penalty on tokens already in the prompt or the sample (their
        positive logits divided by it, negative ones multiplied); 1 = off, 1.2 a common choice.
        Cures the loops greedy decoding falls into.
      no_repeat_ngram_size: never repeat an n-gram of this many tokens (of the prompt or the
        sample); 0 = off, 3 a common choice.
      num_beams: beam search with this many beams instead of sampling (1 = off): the most
        likely continuations the search finds, deterministic (temperature, top_k and top_p do
        not apply); a beam ends at <|endoftext|>.
      num_return_sequences: with num_beams: print this many of the best beams, best first.
      length_penalty: with num_beams: a finished beam scores log P / length ** length_penalty;
        > 0 favours longer beams, < 0 shorter ones.
      early_stopping: with num_beams: stop as soon as num_beams beams have ended, instead of
        when no open beam can beat them.
      window_stride: past the context (prompt + length > n_ctx) the text goes on in a sliding
        window: the last n_ctx - window_stride tokens become the prompt again, their cache is
        recomputed, and window_stride more tokens follow. Default n_ctx // 2; smaller keeps
        more context, larger is faster.
      truncate: cut each sample before the first occurrence of this text (gpt-2-simple's
        name), e.g. '<|endoftext|>'.
      include_prefix: print the prompt in front of each sample (as gpt-2-simple does).
      destination_path: write the samples to this new file instead of printing them, each
        followed by a newline and sample_delim (gpt-2-simple's generate_to_file).
      sample_delim: with destination_path: what follows each sample.
      prompt: text to continue.
      prompt_file: file whose text to continue; '-' reads standard input.
      prompts_file: file of prompts, one per line ('-': standard input; blank lines skipped):
        nsamples samples of each, shown as an interactive session shows them. With
        --batch_size, rows of different prompts run together (left-padded and masked: each
        sample is what its prompt alone gives).
      interactive: ask for prompts in a loop ('Model prompt >>> '), as the original script did.
      stop_at_endoftext: end each sample at the first <|endoftext|> token.
      run_name: sample from a fine-tuning run's newest checkpoint instead of model_name.
      checkpoint_dir: where run directories live.
      offline: never download; a release missing from models_dir is an error.
      dtype: float32 (the released weights as they are), float16 or bfloat16: weights and
        activations in 16 bits, half the memory (README, "Speed, compilation and memory"); meant
        for GPUs, slower than float32 on CPUs. Layer norms, softmax and logits stay float32.
        int8: weights in 8 bits on the tflite backend, a quarter of the memory and on a CPU
        about twice float32's speed, logits within about 0.1 of float32's (README, "TensorFlow
        Lite").
      backend: xla (TensorFlow's compiled loops) or tflite (TensorFlow Lite with XNNPACK; the
        model is converted once, about a minute at 124M, and cached). Default: tflite for
        --dtype int8, else xla (as fast at batch 1 on a CPU, and it runs beam search; for
        float32 batches of 8, tflite was 1.4x faster here).
      verbose: show TensorFlow's log messages.
    """
    from gpt2_tf2.generation import checks  # plain Python: bad flags answered before TF loads

    prompts = None
    if prompts_file is not None:
        if prompt is not None or prompt_file is not None or interactive:
            raise UserError("--prompts_file gives the prompts; drop --prompt/--prompt_file/-i")
        if nsamples == 0:
            raise UserError("nsamples=0 (sample until interrupted) is for unconditional sampling")
        prompts = read_prompts(prompts_file)
    prompt = read_prompt(prompt, prompt_file, interactive, nsamples)
    repetition = (repetition_penalty, no_repeat_ngram_size)
    beams = dict(
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )

    checks.check_nsamples(nsamples)
    checks.check_seed(seed, "--seed")
    checks.check_beam_args(**beams)
    if checks.check_dtype(dtype, backend) == "tflite" and num_beams > 1:
        raise UserError("beam search runs on the xla backend only: drop --backend tflite")
    if destination_path is not None:
        if interactive or nsamples == 0:
            raise UserError("--destination_path needs a fixed --nsamples and no --interactive")
        destination_path = str(destination_path)
        from gpt2_tf2.generation import texts

        texts.check_destination(destination_path)
    if num_beams > 1 and (nsamples != 1 or batch_size != 1 or top_k or top_p != 1.0):
        raise UserError(
            "--num_beams searches, it does not sample: use --num_return_sequences for more "
            "beams, and drop --nsamples, --batch_size, --top_k and --top_p"
        )
    checks.check_sampling_args(  # the flags alone; the prompt's length is checked below
        10**9, 0, length, temperature, top_k, top_p, *repetition, slide=True
    )

    runner.configure_logging(verbose, xla=True)  # from here on, TensorFlow is imported
    from gpt2_tf2.generation import language_model as api

    known = api.peek(model_name, models_dir, run_name, checkpoint_dir)
    if known is not None:  # flag and prompt-length errors before the weights are read
        hparams, encoder = known
        prompt_len = len(api.encode_text(encoder, prompt)) if prompt else (1 if interactive else 0)
        if prompts:
            prompt_len = max(len(api.encode_text(encoder, p)) for p in prompts)
        api.check_sampling_args(
            hparams.n_ctx,
            prompt_len,
            length,
            temperature,
            top_k,
            top_p,
            *repetition,
            slide=num_beams == 1,
        )
        if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
            checks.check_memory(hparams.num_params(), hparams, batch_size, hparams.n_ctx)
    lm = runner.load_model(
        model_name, models_dir, offline, run_name, checkpoint_dir, verbose, dtype, backend
    )
    settings = dict(
        length=length,
        batch_size=batch_size,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_at_endoftext=stop_at_endoftext,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        window_stride=window_stride,
        **beams,
    )
    output = dict(
        truncate=None if truncate is None else str(truncate),
        include_prefix=include_prefix,
        destination_path=destination_path,
        sample_delim=str(sample_delim),
    )
    if prompts:
        print_prompts(lm, prompts, settings, nsamples, output)
        return None
    if not interactive:
        print_samples(lm, prompt, settings, nsamples, output=output)
        return None
    lm.check_sampling_args(1, length, temperature, top_k, top_p, *repetition, slide=True)
    interact(lm, settings, nsamples, output)
    return None


def interact(lm, settings: dict, nsamples: int, output: dict) -> None:
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
            counter = print_samples(lm, raw_text, settings, nsamples, counter, output)
        except UserError as e:  # e.g. a prompt too long: say so and ask again
            print(f"error: {e}", file=sys.stderr)
            continue
        print(FOOTER)


sample.uses_xla = True  # runner.run hides XLA's first-compilation log lines too
sample.configures_logging = True  # after checking its flags, before TensorFlow loads
sample.short = {"i": "interactive"}  # -i, as before --include_prefix also began with i
sample.positional = ()  # a prompt is --prompt; a bare word is refused, not taken as a model


def main(argv=None):
    runner.run(sample, argv, name="gpt2_tf2.sample")
