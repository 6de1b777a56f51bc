"""`python -m gpt2_tf2.convert from-hf|to-hf`: the entry point (`gpt2_tf2.cli.convert`)."""

from gpt2_tf2.cli.convert import from_hf, main, to_hf  # noqa: F401

if __name__ == "__main__":
    main()
