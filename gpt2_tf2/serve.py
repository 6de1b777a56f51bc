"""`python -m gpt2_tf2.serve`: the command's entry point (`gpt2_tf2.cli.serve`)."""

from gpt2_tf2.cli.serve import main

if __name__ == "__main__":
    main()
