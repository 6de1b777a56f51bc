"""`python -m gpt2_tf2.sample`: the command's entry point; the command is `gpt2_tf2.cli.sample`."""

from gpt2_tf2.cli.sample import main, sample  # noqa: F401

if __name__ == "__main__":
    main()
