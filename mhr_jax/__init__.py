"""mhr_jax: multi-head adapter routing (MHR, Poly) for T5 in JAX/Flax."""

__version__ = "0.1.0"
