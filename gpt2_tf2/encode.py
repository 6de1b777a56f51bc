"""`python -m gpt2_tf2.encode`: the command's entry point; the command is `gpt2_tf2.cli.encode`."""

from gpt2_tf2.cli.encode import encode, main  # noqa: F401

if __name__ == "__main__":
    main()
