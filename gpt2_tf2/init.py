"""`python -m gpt2_tf2.init`: the command's entry point; the command is `gpt2_tf2.cli.init`."""

from gpt2_tf2.cli.init import init, main  # noqa: F401

if __name__ == "__main__":
    main()
