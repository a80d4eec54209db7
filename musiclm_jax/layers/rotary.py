"""Rotary position embeddings (RoPE, Su et al. 2021) applied to queries and keys."""

from __future__ import annotations

import jax.numpy as jnp


def apply_rotary(x: jnp.ndarray, positions: jnp.ndarray, max_wavelength: float = 10_000.0
                 ) -> jnp.ndarray:
  """Rotates pairs of channels by position-dependent angles.

  Args:
    x: [batch, length, heads, head_dim] (head_dim even).
    positions: [length] absolute positions of the tokens in x.
  Returns:
    x rotated, same shape and dtype. Dot products of rotated q and k depend only on the
    distance between their positions, which makes cached decoding position-consistent.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
  half = head_dim // 2
  inv_freq = 1.0 / (max_wavelength ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [length, half]
  sin = jnp.sin(angles)[None, :, None, :]
  cos = jnp.cos(angles)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
