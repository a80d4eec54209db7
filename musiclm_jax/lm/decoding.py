"""Autoregressive sampling in one `lax.while_loop`: temperature, top-k, top-p, guidance.

`sample` is model-agnostic: it owns the token buffer and the random stream and asks a
`logits_fn` for the next-step logits after each chosen token. The cached and the
full-recompute paths of `DecoderOnlyLMModel` only differ in their `logits_fn`, so the
sampling rules are written once and the two paths are directly comparable.

Randomness: the tokens at position i are drawn with `fold_in(rng, i)`, so a sample depends
only on (rng, logits), not on how the loop computed the logits.

Settings: `top_k` and whether guidance is on change shapes, so they are Python values. The
temperature, `top_p` and the guidance scale may be traced scalars (one compiled sampler
serves every value); as Python numbers they also let the unused work drop out: temperature
0 samples greedily, top_p 1 skips the nucleus sort.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from musiclm_jax.lm import delay_pattern

NEG_INF = -1e10

# logits_fn(carry, tokens [B, L], new_token [B], index) -> (logits [rows, V], carry): the
# logits for position index + 1 once `new_token` sits at `index`. rows = B, or 2B with
# guidance (conditional rows first, then unconditional).
LogitsFn = Callable[[Any, jnp.ndarray, jnp.ndarray, jnp.ndarray], Tuple[jnp.ndarray, Any]]
# A Python number, or a traced float32 scalar.
Scalar = Union[float, jnp.ndarray]


def apply_guidance(logits: jnp.ndarray, guidance_scale: Optional[Scalar]) -> jnp.ndarray:
  """[2B, V] (cond ; uncond) -> [B, V] = cond + (s - 1) (cond - uncond); None: as is.

  Written around `cond` so that s = 1 returns the conditional logits exactly.
  """
  if guidance_scale is None:
    return logits
  cond, uncond = jnp.split(logits, 2, axis=0)
  return cond + (guidance_scale - 1.0) * (cond - uncond)


def filter_logits(logits: jnp.ndarray, top_k: int = 0, top_p: Scalar = 1.0) -> jnp.ndarray:
  """Masks all but the top-k ids and then all outside the top-p nucleus. [B, V] -> [B, V].

  A traced top_p >= 1 keeps every id, as the Python number 1 does."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if not (isinstance(top_p, numbers.Real) and top_p >= 1.0):
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # Keep the smallest prefix of ids whose mass reaches top_p (the top id always stays).
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1,
                     keepdims=True)
    # (Rounding can push the mass before a last, tiny entry to 1: top_p >= 1 keeps all.)
    cutoff = jnp.where(top_p >= 1.0, -jnp.inf, cutoff)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return logits


def choose_tokens(rng: jax.Array, logits: jnp.ndarray, temperature: Scalar, top_k: int,
                  top_p: Scalar) -> jnp.ndarray:
  """One token per row from logits [B, V]; temperature 0 = greedy (traced or not)."""
  def greedy():
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sampled(divisor):
    filtered = filter_logits(logits / divisor, top_k, top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)

  if isinstance(temperature, numbers.Real):
    return greedy() if temperature == 0.0 else sampled(temperature)
  # A traced temperature may be 0: sample at a positive stand-in, then take the argmax.
  positive = temperature > 0
  return jnp.where(positive, sampled(jnp.where(positive, temperature, 1.0)), greedy())


def sample(logits_fn: LogitsFn, first_logits: jnp.ndarray, carry: Any,
           prompt: jnp.ndarray, length: int, rng: jax.Array, *, temperature: Scalar = 1.0,
           top_k: int = 0, top_p: Scalar = 1.0, guidance_scale: Optional[Scalar] = None,
           level_codes: int = 0, levels_per_frame: int = 1
           ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Samples positions prompt_len .. length-1.

  Args:
    logits_fn: see `LogitsFn`.
    first_logits: [rows, V] logits for position prompt_len (after the prompt).
    carry: logits_fn's state (e.g. the key/value cache).
    prompt: [B, prompt_len] tokens kept as they are at the start of the output.
    length: total number of output tokens.
    rng: random key.
    temperature, top_k, top_p, guidance_scale: see the module docstring; guidance None =
      no unconditional rows.
    level_codes, levels_per_frame: for flattened residual-VQ targets (level q of a frame
      offset by q * level_codes, frame-major): position i may only take ids of level
      i % levels_per_frame. 0 = no constraint.
  Returns:
    tokens [B, length] int32 and log_probs [B, length] float32: the (guided) model
    log-probability of each sampled token before temperature and filtering (0 for the
    prompt).
  """
  batch, prompt_len = prompt.shape
  if not 0 <= prompt_len < length:
    raise ValueError(f"prompt length {prompt_len} must be < decode length {length}")
  tokens = jnp.zeros((batch, length), jnp.int32).at[:, :prompt_len].set(prompt)
  log_probs = jnp.zeros((batch, length), jnp.float32)

  def body(state):
    index, tokens, log_probs, logits, carry = state
    guided = apply_guidance(logits, guidance_scale)
    if level_codes:
      ids = jnp.arange(guided.shape[-1])
      guided = jnp.where(ids // level_codes == index % levels_per_frame, guided, NEG_INF)
    chosen = choose_tokens(jax.random.fold_in(rng, index), guided, temperature, top_k,
                           top_p)
    logp = jnp.take_along_axis(jax.nn.log_softmax(guided, axis=-1), chosen[:, None],
                               axis=-1)[:, 0]
    tokens = jax.lax.dynamic_update_slice(tokens, chosen[:, None], (0, index))
    log_probs = jax.lax.dynamic_update_slice(log_probs, logp[:, None], (0, index))
    fed = chosen if guidance_scale is None else jnp.concatenate([chosen, chosen])
    # The last iteration's forward pass is unused: one wasted step buys a loop without
    # a branch; the cache has one spare slot for it.
    logits, carry = logits_fn(carry, tokens, fed, index)
    return index + 1, tokens, log_probs, logits, carry

  state = (jnp.asarray(prompt_len, jnp.int32), tokens, log_probs, first_logits, carry)
  _, tokens, log_probs, _, _ = jax.lax.while_loop(lambda s: s[0] < length, body, state)
  return tokens, log_probs


def sample_delayed(logits_fn: LogitsFn, first_logits: jnp.ndarray, carry: Any,
                   prompt: jnp.ndarray, length: int, levels: int, rng: jax.Array, *,
                   temperature: Scalar = 1.0, top_k: int = 0, top_p: Scalar = 1.0,
                   guidance_scale: Optional[Scalar] = None
                   ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """`sample` for a delay-pattern model (lm/delay_pattern.py): step s draws level k of
  frame s - k for every level at once, from that level's head.

  Args:
    logits_fn: as `LogitsFn`, but new_token is the step's tokens [rows, levels] (EMPTY
      where a level emitted nothing), index the step, and the logits [rows, levels, V] are
      the next step's.
    first_logits: [rows, levels, V], step 0's.
    prompt: [B, prompt_len] flattened targets kept as they are (forced where they fall).
    length: flattened output tokens, a whole number of frames.
    levels: K.
  Returns:
    tokens [B, length] int32 and log_probs [B, length] float32, in target order, as
    `sample`'s.
  """
  batch, prompt_len = prompt.shape
  if length % levels or not 0 <= prompt_len < length:
    raise ValueError(f"decode length {length} must be whole frames of {levels} levels and "
                     f"longer than the prompt ({prompt_len})")
  frames = length // levels
  level_ids = jnp.arange(levels)
  tokens = jnp.zeros((batch, length), jnp.int32).at[:, :prompt_len].set(prompt)
  log_probs = jnp.zeros((batch, length), jnp.float32)

  def body(state):
    step, tokens, log_probs, logits, carry = state
    guided = apply_guidance(logits, guidance_scale)                      # [B, K, V]
    drawn = choose_tokens(jax.random.fold_in(rng, step),
                          guided.reshape(batch * levels, -1), temperature, top_k,
                          top_p).reshape(batch, levels)
    frame = step - level_ids
    valid = (frame >= 0) & (frame < frames)
    position = jnp.clip(frame, 0, frames - 1) * levels + level_ids      # [K], distinct
    held = tokens[:, position]
    chosen = jnp.where(position < prompt_len, held, drawn)
    logp = jnp.take_along_axis(jax.nn.log_softmax(guided, axis=-1), chosen[..., None],
                               axis=-1)[..., 0]
    logp = jnp.where(position < prompt_len, 0.0, logp)
    tokens = tokens.at[:, position].set(jnp.where(valid, chosen, held))
    log_probs = log_probs.at[:, position].set(
        jnp.where(valid, logp, log_probs[:, position]))
    fed = jnp.where(valid, chosen, delay_pattern.EMPTY)
    fed = fed if guidance_scale is None else jnp.concatenate([fed, fed])
    logits, carry = logits_fn(carry, tokens, fed, step)
    return step + 1, tokens, log_probs, logits, carry

  steps = delay_pattern.num_steps(frames, levels)
  state = (jnp.asarray(0, jnp.int32), tokens, log_probs, first_logits, carry)
  _, tokens, log_probs, _, _ = jax.lax.while_loop(lambda s: s[0] < steps, body, state)
  return tokens, log_probs
