"""musiclm-jax: MusicLM (text-to-music) in JAX/Flax, built T5X-style."""

__version__ = "0.1.0"
