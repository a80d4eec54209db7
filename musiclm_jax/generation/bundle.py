"""Inference bundles: everything `MusicLM` needs, in one folder, checked on load.

  BUNDLE/
    manifest.json          format, token layout, windows, parameter dtype, the model's
                           default sampling per stage (null: the fine stage skipped), and
                           for every file its size and SHA-256, for every parameter its
                           shape/dtype; the codec's provenance where its bundle had one
    mulan/                 config.json, params/ (Orbax), rvq.npz, text/ (tokenizer files),
                           audio_token_bank.npz where the model has one (the training clips'
                           MuLan tokens: text prompts condition on the nearest)
    semantic_tokenizer/    config.json (w2v-BERT + layer), params/ (Orbax), centroids.npz
    codec/                 config.json, params/ (Orbax: generator params + codebooks)
    semantic/ coarse/ fine/  config.json (DecoderConfig), params/ (Orbax)

Parameters only (no optimizer state), optionally cast to bfloat16 (`dtype`); loading
casts back to float32. The bundle is written to a temporary folder and renamed into place.
`load_bundle` verifies every checksum first, then the shapes against what each config
implies, and names the part and file at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import atomic

FORMAT = "musiclm-jax-bundle/1"
MANIFEST = "manifest.json"
PARTS = ("mulan", "semantic_tokenizer", "codec", "semantic", "coarse", "fine")
BANK_FILE = "audio_token_bank.npz"   # in mulan/, optional


class BundleError(ValueError):
  """A bundle that cannot be used: missing part, wrong checksum, mismatched shape."""


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _to_json(config) -> Dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _from_json(cls, values: Mapping[str, Any], source: str):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise BundleError(f"{source}: unknown {cls.__name__} fields {unknown}")
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  try:
    return cls(**kw)
  except (TypeError, ValueError) as e:
    raise BundleError(f"{source}: not a valid {cls.__name__} ({e})") from e


def _write_config(directory: str, config, **extra) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump({**_to_json(config), **extra} if extra else _to_json(config), f, indent=1)


def _save_params(directory: str, tree, dtype: str) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = jax.tree.map(lambda x: np.asarray(x).astype(dtype) if np.issubdtype(
      np.asarray(x).dtype, np.floating) else np.asarray(x), jax.device_get(tree))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, "params"), tree)
  checkpointer.wait_until_finished()


def _restore_params(directory: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.abspath(directory), "params")
  tree = ocp.StandardCheckpointer().restore(path)
  return jax.tree.map(lambda x: np.asarray(x).astype(np.float32) if np.asarray(x).dtype in (
      jnp.bfloat16, np.float16) else np.asarray(x), tree)


def save_bundle(musiclm, path: str, dtype: str = "float32") -> None:
  """Writes `musiclm` (a `musiclm_lib.MusicLM`) as a bundle at `path`, atomically."""
  from musiclm_jax.mulan import tokenizer as mulan_tokenizer  # pylint: disable=g-import-not-at-top
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  with atomic.atomic_directory(path, ".tmp-bundle-") as tmp:
    part = lambda name: os.path.join(tmp, name)
    mulan = musiclm.mulan
    text_dir = os.path.join(part("mulan"), "text")
    os.makedirs(text_dir)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
      source = os.path.join(mulan.config.resolved_text_folder, name)
      if os.path.isfile(source):
        shutil.copy(source, text_dir)
    # The text tower's exact BERT sizes, as a Hugging Face config.json beside its tokenizer:
    # on load the tower is rebuilt from that folder (text_pretrained reads config.json).
    bert_config = mulan.config.bert_config()
    with open(os.path.join(text_dir, "config.json"), "w", encoding="utf-8") as f:
      hf = {k: v for k, v in dataclasses.asdict(bert_config).items() if k != "dtype"}
      json.dump({"model_type": "bert", "hidden_act": "gelu",
                 "position_embedding_type": "absolute", **hf}, f, indent=1)
    _write_config(part("mulan"), dataclasses.replace(mulan.config, text_folder=None,
                                                     text_pretrained=True))
    _save_params(part("mulan"), mulan.params, dtype)
    mulan_tokenizer.save_rvq(os.path.join(part("mulan"), "rvq.npz"), mulan.codebooks)
    if musiclm.audio_token_bank is not None:
      musiclm.audio_token_bank.save(os.path.join(part("mulan"), BANK_FILE))
    semantic_tok = musiclm.semantic_tokenizer
    if semantic_tok is None:
      raise ValueError("this MusicLM has no semantic tokenizer: a bundle needs all six parts")
    _write_config(part("semantic_tokenizer"), semantic_tok.config, layer=semantic_tok.layer)
    _save_params(part("semantic_tokenizer"), semantic_tok.params, dtype)
    semantic_tok.save_centroids(os.path.join(part("semantic_tokenizer"), "centroids.npz"))
    codec = musiclm.codec
    _write_config(part("codec"), codec.config)
    _save_params(part("codec"), codec.variables, dtype)
    for name in ("semantic", "coarse", "fine"):
      stage = getattr(musiclm, name)
      _write_config(part(name), stage.model.config)
      _save_params(part(name), stage.params, dtype)
    files = {}
    for directory, _, names in os.walk(tmp):
      for name in sorted(names):
        full = os.path.join(directory, name)
        rel = os.path.relpath(full, tmp)
        files[rel] = {"sha256": _sha256(full), "bytes": os.path.getsize(full)}
    manifest = {"format": FORMAT, "dtype": dtype, "layout": _to_json(musiclm.layout),
                "windows": _to_json(musiclm.windows), "files": files,
                "sampling": {stage: None if s is None else _to_json(s)
                             for stage, s in musiclm.default_sampling.items()}}
    if codec.provenance is not None:   # how the codec was trained (its bundle's record)
      manifest["provenance"] = {"codec": codec.provenance}
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=1, sort_keys=True)


def _read_manifest(path: str) -> Dict[str, Any]:
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.isfile(manifest_path):
    raise BundleError(f"{path!r} is not a MusicLM bundle: no {MANIFEST}")
  try:
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BundleError(f"{manifest_path}: unreadable ({e})") from e
  if manifest.get("format") != FORMAT:
    raise BundleError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  return manifest


def verify_bundle(path: str) -> Dict[str, Any]:
  """Checks every part is there and every file's size and SHA-256; returns the manifest."""
  manifest = _read_manifest(path)
  files = manifest["files"]
  for name in PARTS:
    if not any(rel.startswith(name + os.sep) for rel in files) or not os.path.isdir(
        os.path.join(path, name)):
      raise BundleError(f"bundle {path!r} lacks the part {name!r}")
  for rel, expected in sorted(files.items()):
    full = os.path.join(path, rel)
    if not os.path.isfile(full):
      raise BundleError(f"bundle {path!r}: missing file {rel}")
    if os.path.getsize(full) != expected["bytes"] or _sha256(full) != expected["sha256"]:
      raise BundleError(f"bundle {path!r}: {rel} does not match its checksum (damaged or "
                        "altered)")
  return manifest


def _check_shapes(part: str, restored, expected) -> None:
  got = {jax.tree_util.keystr(p): np.shape(x)
         for p, x in jax.tree_util.tree_leaves_with_path(restored)}
  want = {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(expected)}
  if got != want:
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:3]
    detail = ", ".join(f"{k}: {got.get(k)} vs config {want.get(k)}" for k in diff)
    raise BundleError(f"bundle part {part!r}: parameters do not match its config ({detail})")


def load_bundle(path: str):
  """A `musiclm_lib.MusicLM` from a bundle (verified first)."""
  import optax  # pylint: disable=g-import-not-at-top
  from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.lm import decoder_lm, models as lm_models  # pylint: disable=g-import-not-at-top
  from musiclm_jax.mulan import model as mulan_model, tokenizer as mulan_tokenizer  # pylint: disable=g-import-not-at-top
  from musiclm_jax.mulan import audio_token_bank  # pylint: disable=g-import-not-at-top
  from musiclm_jax.soundstream import codec as codec_lib, model as ss_model  # pylint: disable=g-import-not-at-top
  from musiclm_jax.lm import token_layout  # pylint: disable=g-import-not-at-top
  from musiclm_jax.w2v_bert import model as w2v_model, tokenizer as semantic_tokenizer  # pylint: disable=g-import-not-at-top
  manifest = verify_bundle(path)
  part = lambda name: os.path.join(path, name)

  def config_of(name, cls, drop=()):
    source = os.path.join(part(name), "config.json")
    with open(source, encoding="utf-8") as f:
      values = json.load(f)
    extra = {k: values.pop(k) for k in drop if k in values}
    return _from_json(cls, values, source), extra

  def params_of(name, expected):
    restored = _restore_params(part(name))
    _check_shapes(name, restored, expected)
    return restored

  layout = _from_json(token_layout.TokenLayout, manifest["layout"], MANIFEST)
  windows = _from_json(musiclm_lib.Windows, manifest["windows"], MANIFEST)
  sampling = _default_sampling(manifest.get("sampling", {}), os.path.join(path, MANIFEST))

  mulan_config, _ = config_of("mulan", mulan_model.MuLanConfig)
  mulan_config = dataclasses.replace(mulan_config, text_folder=os.path.join(part("mulan"), "text"))
  mulan_params = params_of("mulan", mulan_model.abstract_params(mulan_config))
  mulan = mulan_tokenizer.MuLanTokenizer(
      mulan_config, mulan_params, mulan_tokenizer.load_rvq(os.path.join(part("mulan"), "rvq.npz")))
  bank = None
  if os.path.join("mulan", BANK_FILE) in manifest["files"]:
    try:
      bank = audio_token_bank.AudioTokenBank.load(os.path.join(part("mulan"), BANK_FILE),
                                                  mulan.codebooks)
    except ValueError as e:
      raise BundleError(str(e)) from e

  w2v_config, extra = config_of("semantic_tokenizer", w2v_model.W2vBertConfig, drop=("layer",))
  w2v_params = params_of("semantic_tokenizer", w2v_model.abstract_params(w2v_config))
  semantic_tok = semantic_tokenizer.SemanticTokenizer.from_centroids_file(
      w2v_config, w2v_params, os.path.join(part("semantic_tokenizer"), "centroids.npz"),
      extra["layer"])

  codec_config, _ = config_of("codec", ss_model.SoundStreamConfig)
  codec_vars = params_of("codec", ss_model.abstract_variables(codec_config))
  codec = codec_lib.Codec(codec_config, codec_vars,
                          manifest.get("provenance", {}).get("codec"))

  stage_lms = []
  for name in ("semantic", "coarse", "fine"):
    config, _ = config_of(name, decoder_lm.DecoderConfig)
    model = lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(config), optax.identity())
    params = params_of(name, decoder_lm.abstract_params(config))
    stage_lms.append(musiclm_lib.StageLM(model, params))
  return musiclm_lib.MusicLM(layout, mulan, *stage_lms, codec, windows,
                             semantic_tokenizer=semantic_tok, default_sampling=sampling,
                             audio_token_bank=bank)


def _default_sampling(values: Mapping[str, Any], source: str) -> Dict[str, Any]:
  """The manifest's {stage: Sampling fields or null} -> {stage: Sampling or NO_FINE_STAGE}
  (a bundle written before it recorded sampling: {}, the library's defaults)."""
  from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(values, Mapping):
    raise BundleError(f"{source}: sampling must be an object, got {values!r}")
  sampling = {}
  for stage, fields in values.items():
    where = f"{source} sampling[{stage!r}]"
    if fields is not None and not isinstance(fields, Mapping):
      raise BundleError(f"{where} must be an object or null, got {fields!r}")
    sampling[stage] = (musiclm_lib.NO_FINE_STAGE if fields is None else
                       _from_json(musiclm_lib.Sampling, fields, where))
  try:
    return musiclm_lib.check_sampling(sampling, f"{source} sampling")
  except ValueError as e:
    raise BundleError(str(e)) from e
