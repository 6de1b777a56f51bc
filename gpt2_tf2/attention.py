"""`python -m gpt2_tf2.attention`: the command's entry point (`gpt2_tf2.cli.attention`)."""

from gpt2_tf2.cli.attention import attention, main  # noqa: F401

if __name__ == "__main__":
    main()
