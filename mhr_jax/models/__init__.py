"""Our Flax T5 encoder-decoder (transformers 5 ships no Flax models)."""

from mhr_jax.models.t5 import T5
from mhr_jax.models.t5_config import T5Config

__all__ = ["T5", "T5Config"]
