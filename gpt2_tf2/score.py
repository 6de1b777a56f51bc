"""`python -m gpt2_tf2.score`: the command's entry point; the command is `gpt2_tf2.cli.score`."""

from gpt2_tf2.cli.score import main, score  # noqa: F401

if __name__ == "__main__":
    main()
