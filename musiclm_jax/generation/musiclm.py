"""Text to music: MuLan tokens -> semantic -> coarse -> fine -> SoundStream decoder.

A text prompt's MuLan tokens are, with an audio token bank (`mulan.audio_token_bank`), the
training clips' tuple nearest its MuLan text embedding, so the stages are conditioned in the
vocabulary they were trained on; without one, the RVQ tokens of the text embedding (the
paper).

Each stage is a prefix-conditioned decoder-only LM (`lm.models.DecoderOnlyLMModel`) over
the token layout of `lm.token_layout` (the offsets of `tasks.stages` it was trained with). A
stage has a context: the crop it was trained on (semantic 30 s, coarse 10 s, fine 3 s in the
paper).
Longer audio is made window by window: each window's first `overlap` of frames is the
previous window's tail, given as the prompt, and the model continues it; the prefix (MuLan
tokens, and for the acoustic stages the semantic / coarse tokens of the window's span) is
that window's. Story mode changes the MuLan tokens at window starts (`TimedPrompt`).

Continuation (`audio_prompt=`): the prompt audio is tokenized by the same frozen tokenizers
the stages were trained on, its semantic and acoustic tokens become the first windows'
prompts, and every stage continues from there (AudioLM's acoustic continuation, with the
text conditioning of MusicLM; without text, the prompt's own MuLan audio tokens condition,
as in training).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional, Sequence

import jax
import numpy as np

from musiclm_jax.lm import token_layout


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Per-stage sampling settings."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  guidance_scale: Optional[float] = None   # classifier-free guidance (prefix stages)

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0: no top-k), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.guidance_scale is not None and not self.guidance_scale >= 0:
      raise ValueError(f"guidance_scale must be >= 0 (0: unconditional), got "
                       f"{self.guidance_scale}")


# The paper's sampling temperatures (MusicLM section 3.3, after AudioLM): the fine stage's
# low temperature keeps the detail levels close to their most likely codes.
PAPER_SAMPLING = {"semantic": Sampling(temperature=1.0), "coarse": Sampling(temperature=0.95),
                  "fine": Sampling(temperature=0.4)}
# The default: classifier-free guidance 1.5 with MusicGen's top-k 250 and temperature 1 on
# the two text-conditioned stages, the paper's temperature on the fine stage (it reads
# coarse tokens only). Measured by benchmarks/proof_of_learning.py: guidance put more of
# the prompt in the audio on both judges than PAPER_SAMPLING, for twice the work of those
# two stages; on the longer recipe's delay-pattern stages MusicGen's scale 3 cost FAD,
# and 1.5 beat it on FAD and on adherence (docs/stages_and_generation.md).
_GUIDED = Sampling(temperature=1.0, top_k=250, guidance_scale=1.5)
DEFAULT_SAMPLING = {"semantic": _GUIDED, "coarse": _GUIDED, "fine": PAPER_SAMPLING["fine"]}
# `sampling["fine"] = NO_FINE_STAGE` skips the fine stage: the coarse levels are decoded
# alone, which the codec allows because it trains with quantizer dropout. A fine stage that
# has learnt little adds a residual that is mostly noise; benchmarks/acoustic_half.py
# measures whether it helps (docs/stages_and_generation.md). A model can make it its own
# default (`MusicLM(default_sampling=...)`, recorded in its bundle).
NO_FINE_STAGE = None


def fine_stage_sampling(sampling: dict) -> Sampling:
  """The fine stage's Sampling when it runs: `sampling["fine"]`, or DEFAULT_SAMPLING's
  where that skips the stage (a model that skips it by default, asked to run it)."""
  return DEFAULT_SAMPLING["fine"] if sampling["fine"] is NO_FINE_STAGE else sampling["fine"]


def check_sampling(sampling: dict, source: str = "sampling") -> dict:
  """`sampling` ({stage: Sampling}, "fine" may be NO_FINE_STAGE), checked; returns it."""
  unknown = sorted(set(sampling) - set(token_layout.STAGES))
  if unknown:
    raise ValueError(f"{source}: unknown stages {unknown}, expected some of "
                     f"{list(token_layout.STAGES)}")
  for stage, value in sampling.items():
    if not (isinstance(value, Sampling) or (stage == "fine" and value is NO_FINE_STAGE)):
      raise ValueError(f"{source}[{stage!r}] must be a Sampling"
                       f"{' or NO_FINE_STAGE' if stage == 'fine' else ''}, got {value!r}")
  return sampling


@dataclasses.dataclass
class StageLM:
  """A trained stage: its T5X-style model (module + config) and parameters."""
  model: object     # lm.models.DecoderOnlyLMModel
  params: object
  level_codes: int = 0        # acoustic stages: ids per RVQ level (sampling stays in level)
  levels_per_frame: int = 1

  def continue_tokens(self, prefix: np.ndarray, prompt: np.ndarray, new_tokens: int,
                      rng: jax.Array, sampling: Sampling) -> np.ndarray:
    """prefix [B, P], prompt [B, Tp] -> [B, Tp + new_tokens] (the prompt kept)."""
    batch = {"prefix_tokens": np.asarray(prefix, np.int32),
             "decoder_prompt_tokens": np.asarray(prompt, np.int32)}
    tokens, _ = self.model.predict_batch_with_aux(
        self.params, batch, rng, max_decode_length=prompt.shape[1] + new_tokens,
        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
        guidance_scale=sampling.guidance_scale, level_codes=self.level_codes,
        levels_per_frame=self.levels_per_frame)
    return np.asarray(tokens)


@dataclasses.dataclass(frozen=True)
class Windows:
  """Stage contexts in seconds (the training crops) and the overlap carried between
  windows, as a fraction of a window."""
  semantic_seconds: float = 30.0
  coarse_seconds: float = 10.0
  fine_seconds: float = 3.0
  overlap: float = 0.5


def window_starts(total: int, window: int, overlap: int) -> List[int]:
  """Frame offsets of the windows covering [0, total): every window - overlap frames, the
  last one ending at total."""
  if total <= window:
    return [0]
  hop = max(window - overlap, 1)
  starts = list(range(0, total - window, hop))
  return starts + [total - window]


def generate_by_windows(total: int, window: int, overlap: int, tokens_per_frame: int,
                        sample: Callable[[int, int, np.ndarray, int], np.ndarray],
                        batch: int, progress=None, initial: Optional[np.ndarray] = None
                        ) -> np.ndarray:
  """Builds [batch, total * tokens_per_frame] tokens window by window.

  sample(start, frames, prompt [B, p * tokens_per_frame], new_frames) returns the window's
  tokens [B, frames * tokens_per_frame], the prompt first. `initial` [B, n *
  tokens_per_frame] (n < total) are given first frames (an audio prompt): windows they
  cover are skipped, and the first window that reaches past them continues them.
  """
  window = min(window, total)
  out = np.zeros((batch, 0), np.int32) if initial is None else np.asarray(initial, np.int32)
  if progress is not None:
    progress.update(out.shape[1] // tokens_per_frame)
  for start in window_starts(total, window, overlap):
    done = out.shape[1] // tokens_per_frame
    if start + window <= done:
      continue
    prompt = out[:, start * tokens_per_frame:]
    new_frames = start + window - done
    tokens = sample(start, window, prompt, new_frames)
    out = np.concatenate([out, tokens[:, prompt.shape[1]:]], axis=1)
    if progress is not None:
      progress.update(new_frames)
  return out


# How a text prompt becomes the stages' MuLan tokens (MusicLM.text_conditioning).
TEXT_TOKENS = "text_tokens"            # the RVQ tokens of the text embedding (the paper)
AUDIO_TOKEN_BANK = "audio_token_bank"  # the training tuple nearest the text embedding


@dataclasses.dataclass(frozen=True)
class TimedPrompt:
  """A prompt for [start_s, end_s) of the clip (story mode); text None: the audio
  prompt's own MuLan tokens condition."""
  text: Optional[str]
  start_s: float = 0.0
  end_s: float = float("inf")


@dataclasses.dataclass(frozen=True)
class PromptTokens:
  """An audio prompt's tokens, aligned (the acoustic frames span the semantic ones).

  mulan int32 [B, mulan_levels]; semantic int32 [B, S]; acoustic int32 [B, S * ratio,
  acoustic_levels] (level ids, no offsets).
  """
  mulan: np.ndarray
  semantic: np.ndarray
  acoustic: np.ndarray


class MusicLM:
  """The chained stages with their tokenizers.

  Args:
    layout: the token layout the stages were trained on.
    mulan: `mulan.tokenizer.MuLanTokenizer` with its RVQ (text tokens at generation time).
    semantic, coarse, fine: `StageLM`s.
    codec: `soundstream.codec.Codec` (its decoder makes the waveform).
    windows: the stages' contexts.
    semantic_tokenizer: `w2v_bert.tokenizer.SemanticTokenizer` (for audio prompts, and a
      bundle's sixth part).
    default_sampling: this model's sampling where a call gives none, over DEFAULT_SAMPLING
      ({stage: Sampling}; "fine" may be NO_FINE_STAGE): what was measured best for these
      stages (e.g. the tiny recipes skip their fine stage). A bundle records it.
    audio_token_bank: `mulan.audio_token_bank.AudioTokenBank` of the training clips' MuLan
      tokens. With it a text prompt conditions on the bank's tuple nearest its MuLan text
      embedding (`text_conditioning` "audio_token_bank"), in the vocabulary the stages were
      trained on; without it, on the RVQ tokens of the text embedding itself, as in the
      paper ("text_tokens"). Set `text_conditioning` to choose.
  """

  def __init__(self, layout: token_layout.TokenLayout, mulan, semantic: StageLM,
               coarse: StageLM, fine: StageLM, codec, windows: Windows = Windows(),
               semantic_tokenizer=None, default_sampling: Optional[dict] = None,
               audio_token_bank=None):
    self.layout, self.mulan, self.codec, self.windows = layout, mulan, codec, windows
    if audio_token_bank is not None and audio_token_bank.num_levels != layout.mulan_levels:
      raise ValueError(f"the MuLan audio token bank has {audio_token_bank.num_levels} levels, "
                       f"but the token layout gives {layout.mulan_levels}")
    self.audio_token_bank = audio_token_bank
    self.text_conditioning = TEXT_TOKENS if audio_token_bank is None else AUDIO_TOKEN_BANK
    self.semantic_tokenizer = semantic_tokenizer
    self.default_sampling = DEFAULT_SAMPLING | check_sampling(dict(default_sampling or {}),
                                                              "default_sampling")
    # The acoustic stages sample each position from its RVQ level's ids only.
    for name, stage, levels in (("coarse", coarse, layout.coarse_levels),
                                ("fine", fine, layout.acoustic_levels - layout.coarse_levels)):
      parallel = stage.model.config.parallel_levels
      if parallel and parallel != levels:
        raise ValueError(f"the {name} stage models {parallel} levels in parallel, but the "
                         f"token layout gives it {levels}")
    self.semantic = semantic
    self.coarse = dataclasses.replace(coarse, level_codes=layout.acoustic_codes,
                                      levels_per_frame=layout.coarse_levels)
    self.fine = dataclasses.replace(
        fine, level_codes=layout.acoustic_codes,
        levels_per_frame=layout.acoustic_levels - layout.coarse_levels)

  @property
  def sample_rate(self) -> int:
    return self.codec.config.sample_rate

  def tokenize_prompt(self, audio: np.ndarray, sample_rate: int) -> PromptTokens:
    """Audio prompt(s) float [B, samples] (or [samples]) at `sample_rate` -> their tokens,
    cut to whole semantic frames (the codec re-synthesises that span)."""
    from musiclm_jax import audio_tokenizers  # pylint: disable=g-import-not-at-top
    if self.semantic_tokenizer is None:
      raise ValueError("continuing an audio prompt needs the semantic tokenizer (a bundle "
                       "has it; give semantic_tokenizer= to MusicLM)")
    audio = np.asarray(audio, np.float32)
    audio = audio[None] if audio.ndim == 1 else audio
    if audio.ndim != 2:
      raise ValueError(f"audio prompt must be [samples] or [batch, samples], got shape "
                       f"{audio.shape}")
    tokenizers = audio_tokenizers.Tokenizers(self.codec, self.semantic_tokenizer, self.mulan)
    mulan, semantic, acoustic = zip(*(tokenizers.tokenize(wave, sample_rate)
                                      for wave in audio))
    return PromptTokens(np.stack(mulan).astype(np.int32), np.stack(semantic).astype(np.int32),
                        np.stack(acoustic).astype(np.int32))

  def _mulan_prefix(self, prompts: Sequence[Sequence[TimedPrompt]], at_seconds: float,
                    audio_prompt: Optional[PromptTokens] = None) -> np.ndarray:
    """[B, mulan_levels] offset MuLan tokens of the prompt active at `at_seconds`: its text
    tokens, or (text None) the audio prompt's MuLan audio tokens."""
    texts = []
    for timeline in prompts:
      active = [p for p in timeline if p.start_s <= at_seconds < p.end_s] or [timeline[-1]]
      texts.append(active[0].text)
    tokens = np.zeros((len(texts), self.layout.mulan_levels), np.int32)
    with_text = [i for i, text in enumerate(texts) if text is not None]
    if with_text:
      tokens[with_text] = self.text_tokens([texts[i] for i in with_text])
    if len(with_text) < len(texts):
      if audio_prompt is None:
        raise ValueError("a prompt without text needs an audio prompt to condition on")
      without = [i for i, text in enumerate(texts) if text is None]
      tokens[without] = audio_prompt.mulan[without]
    return tokens + np.arange(self.layout.mulan_levels)[None] * self.layout.mulan_codes

  def text_tokens(self, texts: Sequence[str]) -> np.ndarray:
    """MuLan tokens int32 [B, mulan_levels] (no offsets) that condition the stages for
    `texts`, by `text_conditioning`."""
    if self.text_conditioning == AUDIO_TOKEN_BANK:
      if self.audio_token_bank is None:
        raise ValueError("text_conditioning 'audio_token_bank' needs an audio token bank "
                         "(export the bundle with --mulan_token_data)")
      return self.audio_token_bank.nearest(self.mulan.embed_text(list(texts)))
    if self.text_conditioning != TEXT_TOKENS:
      raise ValueError(f"text_conditioning must be {TEXT_TOKENS!r} or {AUDIO_TOKEN_BANK!r}, "
                       f"got {self.text_conditioning!r}")
    return self.mulan.text_tokens(list(texts))

  def _sampling(self, sampling: Optional[dict]) -> dict:
    """A call's sampling over the model's defaults."""
    return self.default_sampling | check_sampling(dict(sampling or {}))

  def _timelines(self, prompts) -> List[List[TimedPrompt]]:
    return [list(p) if isinstance(p, (list, tuple)) else [TimedPrompt(p)] for p in prompts]

  def _semantic_total(self, seconds: float) -> int:
    """Whole semantic frames covering `seconds` (generate() trims the audio to it)."""
    return max(1, math.ceil(seconds * self.layout.semantic_rate - 1e-9))

  def generate_semantic_tokens(self, prompts: Sequence[str | None | Sequence[TimedPrompt]],
                               seconds: float, seed: int = 0, sampling: Optional[dict] = None,
                               show_progress: bool = False,
                               audio_prompt: Optional[PromptTokens] = None) -> np.ndarray:
    """The first stage alone: semantic tokens [B, frames] (cluster ids) for the prompts;
    the same tokens `generate_tokens` builds on for the same arguments."""
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    lay, win = self.layout, self.windows
    sampling = self._sampling(sampling)
    timelines = self._timelines(prompts)
    semantic_total = self._semantic_total(seconds)
    initial = None
    if audio_prompt is not None:
      initial = self._initial_tokens(audio_prompt, len(timelines), semantic_total)["semantic"]
    rngs = iter(jax.random.split(jax.random.fold_in(jax.random.key(seed), 0), 10_000))

    def semantic_window(start, frames, prompt, new):
      prefix = self._mulan_prefix(timelines, start / lay.semantic_rate, audio_prompt)
      return self.semantic.continue_tokens(prefix, prompt, new, next(rngs),
                                           sampling["semantic"])

    window = max(1, int(round(win.semantic_seconds * lay.semantic_rate)))
    with tqdm(total=semantic_total, desc="semantic", unit="frame",
              disable=not show_progress) as progress:
      return generate_by_windows(semantic_total, window, int(window * win.overlap), 1,
                                 semantic_window, len(timelines), progress, initial)

  def generate_tokens(self, prompts: Sequence[str | None | Sequence[TimedPrompt]],
                      seconds: float, seed: int = 0, sampling: Optional[dict] = None,
                      show_progress: bool = False,
                      audio_prompt: Optional[PromptTokens] = None) -> np.ndarray:
    """Acoustic tokens [B, frames, levels] (level ids, no offsets) for the prompts
    ([B, frames, coarse_levels] with `sampling["fine"]` NO_FINE_STAGE).

    With `audio_prompt` (B rows, from `tokenize_prompt`) the tokens start with the prompt's
    and continue it; a prompt None is conditioned on the audio prompt's MuLan tokens.
    """
    semantic = self.generate_semantic_tokens(prompts, seconds, seed, sampling, show_progress,
                                             audio_prompt)
    return self.generate_acoustic_tokens(prompts, semantic, seed, sampling, show_progress,
                                         audio_prompt)

  def generate_acoustic_tokens(self, prompts: Sequence[str | None | Sequence[TimedPrompt]],
                               semantic: np.ndarray, seed: int = 0,
                               sampling: Optional[dict] = None, show_progress: bool = False,
                               audio_prompt: Optional[PromptTokens] = None) -> np.ndarray:
    """The acoustic stages alone: acoustic tokens [B, S * ratio, levels] (level ids, no
    offsets) for given semantic tokens int32 [B, S] (cluster ids), e.g. a real clip's from
    the semantic tokenizer: what the coarse and fine stages make of them. Given the tokens
    `generate_semantic_tokens` returns for the same arguments, it returns what
    `generate_tokens` does. With `sampling["fine"]` NO_FINE_STAGE: the coarse tokens only,
    [B, S * ratio, coarse_levels], the same as the first levels with the fine stage."""
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    lay, win = self.layout, self.windows
    sampling = self._sampling(sampling)
    timelines = self._timelines(prompts)
    batch = len(timelines)
    semantic = np.asarray(semantic)
    if semantic.ndim != 2 or semantic.shape[0] != batch or semantic.shape[1] < 1:
      raise ValueError(f"semantic tokens must be [batch={batch}, frames >= 1], got shape "
                       f"{semantic.shape}")
    if semantic.min() < 0 or semantic.max() >= lay.semantic_codes:
      raise ValueError(f"semantic tokens must be cluster ids in [0, {lay.semantic_codes}), got "
                       f"[{semantic.min()}, {semantic.max()}]")
    ratio = lay.acoustic_rate // lay.semantic_rate
    qc = lay.coarse_levels
    semantic_total = semantic.shape[1]
    acoustic_total = semantic_total * ratio
    initial = {name: None for name in token_layout.STAGES}
    if audio_prompt is not None:
      initial = self._initial_tokens(audio_prompt, batch, semantic_total)
    # The acoustic stages draw from their own stream (the semantic stage's is fold_in 0).
    rngs = iter(jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), 10_000))
    frames = lambda s: max(1, int(round(s * lay.semantic_rate)))

    def coarse_window(start, length, prompt, new):
      mulan = self._mulan_prefix(timelines, start / lay.semantic_rate, audio_prompt)
      span = semantic[:, start:start + length] + lay.mulan_levels * lay.mulan_codes
      tokens = self.coarse.continue_tokens(np.concatenate([mulan, span], axis=1), prompt,
                                           new * ratio * qc, next(rngs), sampling["coarse"])
      return tokens

    coarse_window_frames = frames(win.coarse_seconds)
    with tqdm(total=semantic_total, desc="coarse", unit="frame",
              disable=not show_progress) as progress:
      coarse = generate_by_windows(
          semantic_total, coarse_window_frames, int(coarse_window_frames * win.overlap),
          ratio * qc, coarse_window, batch, progress, initial["coarse"])

    coarse = coarse.reshape(batch, acoustic_total, qc) - np.arange(qc) * lay.acoustic_codes
    if sampling["fine"] is NO_FINE_STAGE:
      return coarse
    fine = self._fine_tokens(coarse, rngs, sampling["fine"], initial["fine"], show_progress)
    return np.concatenate([coarse, fine], axis=-1)

  def generate_fine_tokens(self, coarse: np.ndarray, seed: int = 0,
                           sampling: Optional[dict] = None,
                           show_progress: bool = False) -> np.ndarray:
    """The fine stage alone: fine tokens [B, T, acoustic_levels - coarse_levels] (level
    ids) for given coarse tokens int32 [B, T, coarse_levels] (level ids, no offsets), e.g. a
    real clip's from the codec: what the fine stage adds to them. Sampled with
    `sampling["fine"]`, else the model's default, else (a model that skips its fine stage by
    default) DEFAULT_SAMPLING's."""
    lay = self.layout
    coarse = np.asarray(coarse)
    if coarse.ndim != 3 or coarse.shape[-1] != lay.coarse_levels or coarse.shape[1] < 1:
      raise ValueError(f"coarse tokens must be [batch, frames >= 1, {lay.coarse_levels}], "
                       f"got shape {coarse.shape}")
    if coarse.min() < 0 or coarse.max() >= lay.acoustic_codes:
      raise ValueError(f"coarse tokens must be level ids in [0, {lay.acoustic_codes}), got "
                       f"[{coarse.min()}, {coarse.max()}]")
    given = check_sampling(dict(sampling or {}))
    if "fine" in given and given["fine"] is NO_FINE_STAGE:
      raise ValueError("generate_fine_tokens runs the fine stage: give it a fine Sampling")
    fine = fine_stage_sampling(self.default_sampling | given)
    rngs = iter(jax.random.split(jax.random.fold_in(jax.random.key(seed), 2), 10_000))
    return self._fine_tokens(coarse, rngs, fine, None, show_progress)

  def _fine_tokens(self, coarse: np.ndarray, rngs, sampling: Sampling,
                   initial: Optional[np.ndarray], show_progress: bool) -> np.ndarray:
    """Fine level ids [B, T, qf] for coarse level ids [B, T, qc], window by window; `initial`
    (fine tokens with offsets, [B, n * qf]) are given first frames."""
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    lay, win = self.layout, self.windows
    batch, total, qc = coarse.shape
    qf = lay.acoustic_levels - qc
    coarse = (coarse + np.arange(qc) * lay.acoustic_codes).reshape(batch, -1)

    def fine_window(start, length, prompt, new):
      prefix = coarse[:, start * qc:(start + length) * qc]
      return self.fine.continue_tokens(prefix, prompt, new * qf, next(rngs), sampling)

    frames = max(1, int(round(win.fine_seconds * lay.acoustic_rate)))
    with tqdm(total=total, desc="fine", unit="frame", disable=not show_progress) as progress:
      fine = generate_by_windows(total, frames, int(frames * win.overlap), qf, fine_window,
                                 batch, progress, initial)
    return fine.reshape(batch, total, qf) - np.arange(qf) * lay.acoustic_codes

  def _initial_tokens(self, audio_prompt: PromptTokens, batch: int, semantic_total: int
                      ) -> dict:
    """Each stage's given first frames, [B, n * tokens_per_frame] with its offsets."""
    lay = self.layout
    qc = lay.coarse_levels
    if audio_prompt.semantic.shape[0] != batch:
      raise ValueError(f"{audio_prompt.semantic.shape[0]} audio prompts for {batch} text "
                       "prompts: give one audio prompt per text prompt")
    frames = audio_prompt.semantic.shape[1]
    if not 0 < frames < semantic_total:
      raise ValueError(
          f"the audio prompt is {frames / lay.semantic_rate:g} s of whole semantic frames: "
          f"ask for more seconds than that (the output starts with the prompt) and give at "
          f"least one frame ({1 / lay.semantic_rate:g} s)")
    # Each stage numbers its own levels from 0 (the fine stage's first is level qc).
    offsets = lambda levels: np.arange(levels) * lay.acoustic_codes
    coarse, fine = audio_prompt.acoustic[..., :qc], audio_prompt.acoustic[..., qc:]
    return {"semantic": audio_prompt.semantic,
            "coarse": (coarse + offsets(qc)).reshape(batch, -1),
            "fine": (fine + offsets(fine.shape[-1])).reshape(batch, -1)}

  def generate(self, prompts: Sequence[str | None | Sequence[TimedPrompt]], seconds: float,
               seed: int = 0, sampling: Optional[dict] = None, show_progress: bool = False,
               audio_prompt: Optional[np.ndarray] = None,
               audio_prompt_rate: Optional[int] = None) -> np.ndarray:
    """Audio [B, round(seconds x rate)] at `sample_rate` for each prompt (or timeline).

    audio_prompt: float [samples] (shared by every prompt) or [B, samples] at
      `audio_prompt_rate` (default: the codec's): the output starts with it (re-synthesised
      by the codec) and continues it up to `seconds` in all; a prompt None is conditioned
      on the audio's MuLan tokens.
    """
    tokens = None
    if audio_prompt is not None:
      audio_prompt = np.asarray(audio_prompt, np.float32)
      if audio_prompt.ndim == 1:
        audio_prompt = np.repeat(audio_prompt[None], len(prompts), axis=0)
      tokens = self.tokenize_prompt(audio_prompt, audio_prompt_rate or self.sample_rate)
    tokens = self.generate_tokens(prompts, seconds, seed, sampling, show_progress, tokens)
    wave = self.codec.decode(tokens.astype(np.int32))
    return wave[:, :int(round(seconds * self.sample_rate))]

  def generate_ranked(self, prompts: Sequence[str | Sequence[TimedPrompt]], seconds: float,
                      num_samples: int, seed: int = 0, sampling: Optional[dict] = None,
                      show_progress: bool = False, audio_prompt: Optional[np.ndarray] = None,
                      audio_prompt_rate: Optional[int] = None):
    """`num_samples` candidates per prompt in one batch, best first by MuLan text-audio
    cosine: (audio [P, N, samples], scores [P, N]). A story is scored against its first
    prompt. audio_prompt: [samples] or [P, samples], as in `generate`."""
    from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch = [p for p in prompts for _ in range(num_samples)]
    texts = [p if p is None or isinstance(p, str) else p[0].text for p in batch]
    if None in texts:
      raise ValueError("ranking scores each clip against its text: give every prompt text")
    if audio_prompt is not None and np.ndim(audio_prompt) == 2:
      audio_prompt = np.repeat(audio_prompt, num_samples, axis=0)
    waves = self.generate(batch, seconds, seed, sampling, show_progress, audio_prompt,
                          audio_prompt_rate)
    rate = self.mulan.config.sample_rate
    audio = np.stack([audio_io.resample(w, self.sample_rate, rate) for w in waves])
    scores = np.sum(self.mulan.embed_text(texts) * self.mulan.embed_audio(audio), axis=-1)
    waves = waves.reshape(len(prompts), num_samples, -1)
    scores = scores.reshape(len(prompts), num_samples)
    order = np.argsort(-scores, axis=1)
    return (np.take_along_axis(waves, order[..., None], axis=1),
            np.take_along_axis(scores, order, axis=1))
