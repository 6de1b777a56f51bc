"""Generation: `LanguageModel` (load -> generate / score), the decoding settings, logits
processors, strategies and the compiled loop that calls them (`loop.py`)."""
