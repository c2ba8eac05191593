"""Command-line flags shared by the CLI tests: a 1-layer, 64-dim model of the default architecture on a tiny corpus,
a few seconds a run."""

TINY = [
    "--model-preset", "test", "--config_overrides", "num_hidden_layers=1", "--vocab_size", "512",
    "--context-length", "64",
    "--per_device_train_batch_size", "8", "--logging_steps", "5", "--valid_split_percentage", "20",
    "--max_new_tokens", "8", "--disable_tqdm", "true",
]  # fmt: skip
