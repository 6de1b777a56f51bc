"""`python -m gpt2_tf2 COMMAND ...`: the same as the `gpt2_tf2` console command."""

from gpt2_tf2.cli import main

main()
