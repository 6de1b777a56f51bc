"""Model-directory formats behind one `load_model_dir(path)`: OpenAI's TF1 layout (`openai.py`,
with the downloader of OpenAI's releases in `download.py`) and a fine-tuning run's checkpoint
(`run.py`); `model_dir.py` finds a directory, tells its format and checks it."""
