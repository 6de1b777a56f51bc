"""`python -m gpt2_tf2.export`: the command's entry point; the command is `gpt2_tf2.cli.export`."""

from gpt2_tf2.cli.export import export, main  # noqa: F401

if __name__ == "__main__":
    main()
