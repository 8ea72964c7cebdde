"""Checkpoint formats: `hf` (Hugging Face T5 dirs), `orbax` (training state), `tokenizer`.

Import the submodule you need; this package imports nothing itself so that
Orbax stays out of code paths that only read HF checkpoints.
"""
