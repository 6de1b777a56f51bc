"""`python -m gpt2_tf2.vocab train|stats`: the command's entry point (`gpt2_tf2.cli.vocab`)."""

from gpt2_tf2.cli.vocab import main, stats, train  # noqa: F401

if __name__ == "__main__":
    main()
