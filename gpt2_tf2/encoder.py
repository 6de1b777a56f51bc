"""The original API's module name: `gpt2_tf2.encoder.get_encoder(model_name, models_dir)`, as
openai/gpt-2's `src/encoder.py`. The tokenizer lives in `gpt2_tf2.tokenizer`."""

from gpt2_tf2.tokenizer.bpe import (  # noqa: F401
    BPE_CACHE_SIZE,
    ENDOFTEXT,
    GPT2_VOCAB_SHA256,
    PRETOKENIZE,
    VOCAB_FILES,
    Encoder,
    bytes_to_unicode,
    check_vocabulary,
)
from gpt2_tf2.tokenizer.vocabulary import get_encoder, load_encoder  # noqa: F401
