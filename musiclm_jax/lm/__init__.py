"""Decoder-only transformer LMs: the semantic, coarse and fine acoustic stages."""

from musiclm_jax.lm import decoder_lm, decoding, models, token_layout  # noqa: F401  (gin)
