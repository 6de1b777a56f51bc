"""`gpt2_tf2.checkpoint.write_model_dir(model, hparams, vocab_files, out_dir)` and the TF1 name
table under their original module name; the format lives in `gpt2_tf2.formats.openai`."""

from gpt2_tf2.formats.openai import (  # noqa: F401
    CKPT_NAME,
    find_checkpoint,
    load_openai_checkpoint,
    name_table,
    write_model_dir,
)
