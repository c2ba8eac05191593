"""Corpora and tokenizers that exist locally: the embedded default corpus, files, directories."""
