"""`DecoderOnlyLMModel`: losses, scoring and sampling for a `DecoderOnlyLM` (cf. T5X's
`DecoderOnlyModel`).

Batches (from `PrefixLMFeatureConverter`):
  prefix_tokens [B, P] (optional), decoder_input_tokens [B, T], decoder_target_tokens
  [B, T], decoder_loss_weights [B, T].
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Tuple

import gin
import jax
import jax.numpy as jnp
import optax

from musiclm_jax.lm import decoder_lm, decoding, delay_pattern
from musiclm_jax.training import models as models_lib


def cross_entropy_with_z_loss(logits: jnp.ndarray, targets: jnp.ndarray,
                              weights: jnp.ndarray, z_loss: float = 0.0):
  """Per-token (nll + z_loss * logsumexp^2, nll, correct). Shapes [B, T, V], [B, T] -> [B, T].

  The z-loss (PaLM) keeps the softmax normaliser near 1, which stabilises bfloat16 logits.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  total = nll + z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return total * weights, nll * weights, correct * weights


def chunked_cross_entropy(hidden: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray,
                          project, chunk_length: int, z_loss: float = 0.0):
  """Sums over [B, T] of `cross_entropy_with_z_loss`'s (total, nll, correct), with the
  logits [B, chunk_length, V] made from hidden [B, T, E] one chunk at a time by
  project(hidden chunk) -> logits, and made again in the backward pass (jax.checkpoint):
  the float32 [B, T, V] logits and their gradient never exist whole. T is zero-weight
  padded to a multiple of chunk_length.
  """
  batch, length, _ = hidden.shape
  pad = -length % chunk_length
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  chunks = (length + pad) // chunk_length
  as_chunks = lambda x: jnp.swapaxes(
      x.reshape((batch, chunks, chunk_length) + x.shape[2:]), 0, 1)

  @jax.checkpoint
  def chunk_sums(h, t, w):
    total, nll, correct = cross_entropy_with_z_loss(project(h), t, w, z_loss)
    return jnp.sum(total), jnp.sum(nll), jnp.sum(correct)

  def body(sums, chunk):
    return tuple(a + b for a, b in zip(sums, chunk_sums(*chunk))), None

  zero = jnp.zeros((), jnp.float32)
  sums, _ = jax.lax.scan(body, (zero, zero, zero),
                         (as_chunks(hidden), as_chunks(targets), as_chunks(weights)))
  return sums


@gin.configurable
class DecoderOnlyLMModel(models_lib.BaseModel):
  """Prefix-conditioned LM with classifier-free-guidance training and cached sampling."""

  def __init__(self, module: decoder_lm.DecoderOnlyLM, optimizer_def: optax.GradientTransformation,
               prefix_dropout_rate: float = 0.0, z_loss: float = 0.0,
               loss_chunk_length: int = 0):
    """Args:
      module: the network.
      optimizer_def: optax transformation (see `training.optimizers.create_optimizer`).
      prefix_dropout_rate: probability that a training example's prefix is replaced by
        NULL tokens, which trains the unconditional model used for guidance.
      z_loss: weight of the log-partition-function penalty.
      loss_chunk_length: > 0: the training loss makes the logits this many positions at a
        time (`chunked_cross_entropy`), so the float32 [batch, length, vocab] logits are
        never whole; 0: all at once.
    """
    super().__init__(module, optimizer_def)
    if not 0.0 <= prefix_dropout_rate <= 1.0:
      raise ValueError(f"prefix_dropout_rate must be in [0, 1], got {prefix_dropout_rate}")
    if loss_chunk_length < 0:
      raise ValueError(f"loss_chunk_length must be >= 0, got {loss_chunk_length}")
    if loss_chunk_length and module.config.parallel_levels:
      raise ValueError("loss_chunk_length needs one position per target: set it to 0 with "
                       f"parallel_levels={module.config.parallel_levels}")
    self.prefix_dropout_rate = prefix_dropout_rate
    self.z_loss = z_loss
    self.loss_chunk_length = loss_chunk_length

  @property
  def config(self) -> decoder_lm.DecoderConfig:
    return self.module.config

  def _prefix(self, batch: Mapping[str, jnp.ndarray]) -> Optional[jnp.ndarray]:
    if self.config.prefix_vocab_size == 0:
      return None
    if "prefix_tokens" not in batch:
      raise KeyError("this model is conditional (prefix_vocab_size="
                     f"{self.config.prefix_vocab_size}) but the batch has no 'prefix_tokens'; "
                     f"keys: {sorted(batch)}")
    return batch["prefix_tokens"]

  # ---- training -----------------------------------------------------------------------------

  def _step_inputs(self, decoder_input_tokens: jnp.ndarray) -> jnp.ndarray:
    """The module's input: the shifted targets [B, T] as they are, or with parallel_levels
    K the delay pattern's step tokens [B, T / K + K - 1, K]."""
    levels = self.config.parallel_levels
    if not levels:
      return decoder_input_tokens
    # decoder_input_tokens is BOS + targets[:-1]; the last target is never read as input.
    targets = jnp.pad(decoder_input_tokens[:, 1:], ((0, 0), (0, 1)))
    return delay_pattern.step_inputs(targets, levels, self.config.bos_id)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    tokens = self._step_inputs(jnp.zeros(input_shapes["decoder_input_tokens"], jnp.int32))
    prefix = None
    if self.config.prefix_vocab_size:
      prefix = jnp.zeros(input_shapes["prefix_tokens"], jnp.int32)
    return self.module.init({"params": rng}, tokens, prefix, deterministic=True)

  def _logits(self, params, batch, dropout_rng, return_hidden: bool = False):
    """Logits [B, T, V] of the targets (or with return_hidden the final hidden states
    [B, T, E]); with parallel_levels the steps' logits put back in target order."""
    prefix = self._prefix(batch)
    rngs = None
    if dropout_rng is not None:
      prefix_rng, dropout_rng = jax.random.split(dropout_rng)
      rngs = {"dropout": dropout_rng}
      if prefix is not None and self.prefix_dropout_rate > 0:
        drop = jax.random.bernoulli(prefix_rng, self.prefix_dropout_rate,
                                    (prefix.shape[0], 1))
        prefix = jnp.where(drop, self.config.null_prefix_id, prefix)
    out = self.module.apply({"params": params}, self._step_inputs(
        batch["decoder_input_tokens"]), prefix, deterministic=dropout_rng is None, rngs=rngs,
                            return_hidden=return_hidden)
    if self.config.parallel_levels and not return_hidden:
      out = delay_pattern.flat_step_logits(out)
    return out

  def loss_fn(self, params, batch, dropout_rng, group=models_lib.DEFAULT_GROUP):
    """Token-averaged cross-entropy (+ z-loss) over weighted target positions."""
    chunked = self.loss_chunk_length > 0
    out = self._logits(params, batch, dropout_rng, return_hidden=chunked)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    targets = batch["decoder_target_tokens"]
    if chunked:  # `out` is the hidden states
      head = decoder_lm.logits_head(self.config)
      project = lambda h: decoder_lm.masked_logits(
          self.config, head.apply({"params": params["logits_dense"]}, h))
      total, nll, correct = chunked_cross_entropy(out, targets, weights, project,
                                                  self.loss_chunk_length, self.z_loss)
    else:
      total, nll, correct = (jnp.sum(x) for x in cross_entropy_with_z_loss(
          out, targets, weights, self.z_loss))
    weight_sum = jnp.sum(weights)
    loss = total / jnp.maximum(weight_sum, 1.0)
    metrics = {"loss_sum": nll, "accuracy_sum": correct, "weight_sum": weight_sum}
    return loss, metrics

  def score_batch(self, params, batch):
    """Sum of target log-likelihoods per example, [B]."""
    logits = self._logits(params, batch, None)
    _, nll, _ = cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"],
                                          batch["decoder_loss_weights"].astype(jnp.float32))
    return -jnp.sum(nll, axis=-1)

  def teacher_forced_logits(self, params, batch, guidance_scale: Optional[float] = None
                            ) -> jnp.ndarray:
    """Logits [B, T, V] of every target given the real targets before it, float32 with the
    padding ids masked: what sampling would see at each position had it drawn the real
    tokens so far. With `guidance_scale` s, as sampling guides them: cond + (s - 1)(cond -
    uncond), uncond with the NULL prefix. batch: 'decoder_input_tokens' (BOS + targets[:
    -1]) and, for a conditional model, 'prefix_tokens'."""
    logits = self._logits(params, batch, None)
    if guidance_scale is None:
      return logits
    prefix = self._prefix(batch)
    if prefix is None:
      raise ValueError("guidance_scale needs a conditional model and 'prefix_tokens'")
    null = {**batch, "prefix_tokens": jnp.full_like(prefix, self.config.null_prefix_id)}
    return decoding.apply_guidance(jnp.concatenate([logits, self._logits(params, null, None)]),
                                   guidance_scale)

  # ---- sampling -----------------------------------------------------------------------------

  def predict_batch(self, params, batch, rng=None, **decoder_params) -> jnp.ndarray:
    """Sampled target tokens [B, max_decode_length]; see `predict_batch_with_aux`."""
    return self.predict_batch_with_aux(params, batch, rng, **decoder_params)[0]

  def predict_batch_with_aux(self, params, batch, rng=None, *,
                             max_decode_length: Optional[int] = None,
                             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                             guidance_scale: Optional[float] = None,
                             use_cache: bool = True, level_codes: int = 0,
                             levels_per_frame: int = 1) -> Tuple[jnp.ndarray, dict]:
    """Samples targets for each example, conditioned on its prefix.

    Args:
      params: model parameters.
      batch: 'prefix_tokens' [B, P] for conditional models; optionally
        'decoder_prompt_tokens' [B, Tp] (the first Tp targets, kept, e.g. a continuation);
        'decoder_input_tokens' only tells the batch size and default length.
      rng: random key (needed unless temperature == 0).
      max_decode_length: number of target tokens to produce (default: input length).
      temperature: softmax temperature; 0 = greedy.
      top_k: keep the k most likely ids (0 = all).
      top_p: keep the smallest set of ids holding this probability mass (1 = all).
      guidance_scale: classifier-free guidance scale s (logits = cond + (s-1)(cond -
        uncond)); None = no guidance (and no unconditional pass).
      use_cache: key/value cache (fast); False recomputes the whole sequence every step
        (the reference the cache is tested against).
      level_codes, levels_per_frame: targets are flattened RVQ frames (AudioLM's offsets):
        constrain each position to its level's ids (`decoding.sample`). A model with
        parallel_levels keeps to them by construction (checked to match).
    Returns:
      tokens [B, max_decode_length] int32 and {'log_probs': [B, max_decode_length]}.
    """
    prefix = self._prefix(batch)
    prompt = batch.get("decoder_prompt_tokens")
    some = next(batch[k] for k in ("prefix_tokens", "decoder_prompt_tokens",
                                   "decoder_input_tokens") if k in batch)
    batch_size = some.shape[0]
    if max_decode_length is None:
      if "decoder_input_tokens" not in batch:
        raise ValueError("pass max_decode_length or a batch with 'decoder_input_tokens'")
      max_decode_length = batch["decoder_input_tokens"].shape[1]
    if prompt is None:
      prompt = jnp.zeros((batch_size, 0), jnp.int32)
    if guidance_scale is not None and prefix is None:
      raise ValueError("guidance_scale needs a conditional model and 'prefix_tokens'")
    if temperature != 0.0 and rng is None:
      raise ValueError("sampling with temperature > 0 needs an rng")
    if rng is None:
      rng = jax.random.key(0)
    if (self.config.parallel_levels and level_codes and
        (levels_per_frame, level_codes) != (self.config.parallel_levels,
                                            self.config.level_codes)):
      raise ValueError(f"levels_per_frame={levels_per_frame}, level_codes={level_codes} do "
                       f"not match the model's {self.config.parallel_levels} parallel levels "
                       f"of {self.config.level_codes} ids")
    # The settings' values are traced (a new temperature, top_p or guidance scale reuses the
    # compiled sampler); what they switch on or off is static.
    values = {"temperature": jnp.float32(temperature), "top_p": jnp.float32(top_p),
              "guidance_scale": jnp.float32(1.0 if guidance_scale is None else guidance_scale)}
    tokens, log_probs = self._sample_jit(
        params, prefix, jnp.asarray(prompt, jnp.int32), rng, values,
        length=int(max_decode_length), greedy=float(temperature) == 0.0, top_k=int(top_k),
        nucleus=float(top_p) < 1.0, guided=guidance_scale is not None,
        use_cache=bool(use_cache), level_codes=int(level_codes),
        levels_per_frame=int(levels_per_frame))
    return tokens, {"log_probs": log_probs}

  @functools.partial(jax.jit, static_argnums=0,
                     static_argnames=("length", "greedy", "top_k", "nucleus", "guided",
                                      "use_cache", "level_codes", "levels_per_frame"))
  def _sample_jit(self, params, prefix, prompt, rng, values, *, length, greedy, top_k,
                  nucleus, guided, use_cache, level_codes, levels_per_frame):
    temperature = 0.0 if greedy else values["temperature"]
    top_p = values["top_p"] if nucleus else 1.0
    guidance_scale = values["guidance_scale"] if guided else None
    cfg = self.config
    # Decoding re-reads every weight each step: cast once to the compute dtype (bfloat16
    # halves the bytes read per token) instead of inside every step.
    params = jax.tree.map(lambda x: x.astype(cfg.jnp_dtype), params)
    if guidance_scale is not None:
      # Conditional rows first, then the same examples with a NULL prefix.
      prefix = jnp.concatenate([prefix, jnp.full_like(prefix, cfg.null_prefix_id)])
    rows = prompt.shape[0] * (1 if guidance_scale is None else 2)
    bos = jnp.full((rows, 1), cfg.bos_id, jnp.int32)
    prompt_rows = prompt if guidance_scale is None else jnp.concatenate([prompt, prompt])
    prompt_len = prompt.shape[1]
    apply = functools.partial(self.module.apply, deterministic=True)

    if cfg.parallel_levels:
      return self._sample_delayed(apply, params, prefix, prompt, rng, rows, length,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  guidance_scale=guidance_scale, use_cache=use_cache)
    if use_cache:
      prefix_len = 0 if prefix is None else prefix.shape[1]
      cache_length = prefix_len + length + 1  # + one slot for the loop's unused last step
      first_chunk = jnp.concatenate([bos, prompt_rows], axis=1)
      logits, variables = apply({"params": params}, first_chunk, prefix, decode=True,
                                cache_length=cache_length, mutable=["cache"])

      def logits_fn(cache, tokens, new_token, index):
        del tokens, index
        step_logits, variables = apply({"params": params, "cache": cache}, new_token[:, None],
                                       None, decode=True, cache_length=cache_length,
                                       mutable=["cache"])
        return step_logits[:, 0], variables["cache"]

      carry = variables["cache"]
    else:
      def full_logits(tokens):
        tokens = tokens if guidance_scale is None else jnp.concatenate([tokens, tokens])
        inputs = jnp.concatenate([bos, tokens[:, :-1]], axis=1)
        return apply({"params": params}, inputs, prefix)

      def logits_fn(carry, tokens, new_token, index):
        del new_token
        position = jnp.minimum(index + 1, length - 1)
        return jax.lax.dynamic_index_in_dim(full_logits(tokens), position, 1, False), carry

      padded_prompt = jnp.zeros((prompt.shape[0], length), jnp.int32)
      padded_prompt = padded_prompt.at[:, :prompt_len].set(prompt)
      logits = full_logits(padded_prompt)[:, :prompt_len + 1]
      carry = ()

    return decoding.sample(logits_fn, logits[:, -1], carry, prompt, length, rng,
                           temperature=temperature, top_k=top_k, top_p=top_p,
                           guidance_scale=guidance_scale, level_codes=level_codes,
                           levels_per_frame=levels_per_frame)

  def _sample_delayed(self, apply, params, prefix, prompt, rng, rows, length, *,
                      temperature, top_k, top_p, guidance_scale, use_cache):
    """`_sample_jit`'s body for a delay-pattern model: one position per step."""
    cfg = self.config
    levels = cfg.parallel_levels
    steps = delay_pattern.num_steps(length // levels, levels)
    first = jnp.full((rows, 1, levels), delay_pattern.EMPTY, jnp.int32).at[:, 0, 0].set(
        cfg.bos_id)
    if use_cache:
      prefix_len = 0 if prefix is None else prefix.shape[1]
      cache_length = prefix_len + steps + 1  # + one slot for the loop's unused last step
      logits, variables = apply({"params": params}, first, prefix, decode=True,
                                cache_length=cache_length, mutable=["cache"])

      def logits_fn(cache, tokens, step_tokens, step):
        del tokens, step
        step_logits, variables = apply({"params": params, "cache": cache},
                                       step_tokens[:, None], None, decode=True,
                                       cache_length=cache_length, mutable=["cache"])
        return step_logits[:, 0], variables["cache"]

      carry = variables["cache"]
    else:
      def full_logits(tokens):
        tokens = tokens if guidance_scale is None else jnp.concatenate([tokens, tokens])
        return apply({"params": params},
                     delay_pattern.step_inputs(tokens, levels, cfg.bos_id), prefix)

      def logits_fn(carry, tokens, step_tokens, step):
        del step_tokens
        position = jnp.minimum(step + 1, steps - 1)
        return jax.lax.dynamic_index_in_dim(full_logits(tokens), position, 1, False), carry

      padded_prompt = jnp.zeros((prompt.shape[0], length), jnp.int32)
      padded_prompt = padded_prompt.at[:, :prompt.shape[1]].set(prompt)
      logits = full_logits(padded_prompt)
      carry = ()
    return decoding.sample_delayed(logits_fn, logits[:, 0], carry, prompt, length, levels,
                                   rng, temperature=temperature, top_k=top_k, top_p=top_p,
                                   guidance_scale=guidance_scale)
