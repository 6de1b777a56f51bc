"""`python -m gpt2_tf2.download`: the command's entry point (`gpt2_tf2.cli.download`)."""

from gpt2_tf2.cli.download import download, main  # noqa: F401

if __name__ == "__main__":
    main()
