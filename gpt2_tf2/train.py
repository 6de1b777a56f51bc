"""`python -m gpt2_tf2.train`: the command's entry point; the command is `gpt2_tf2.cli.train`."""

from gpt2_tf2.cli.train import main, train  # noqa: F401

if __name__ == "__main__":
    main()
