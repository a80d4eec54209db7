"""MuLan: the BERT text tower and its tokenizer against Hugging Face, the towers, the
contrastive losses and retrieval metrics, and the MuLan tokenizer (RVQ)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from musiclm_jax.mulan import bert, model as model_lib, pretrained_bert, text_tokenizer
from musiclm_jax.mulan import text_vocabulary
from musiclm_jax.mulan import tokenizer as tokenizer_lib
from tests import bert_reference, harness
from tests import mulan_fixtures as fx

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                         "minilm_l6_reference.npz")


@pytest.fixture(scope="module")
def minilm():
  folder = pretrained_bert.minilm_l6_folder()
  config, params = pretrained_bert.load_bert_folder(folder)
  return folder, config, params


def _hidden_states(config, params, ids):
  return bert.BertEncoder(config).apply({"params": params}, jnp.asarray(ids),
                                        return_all_layers=True)


def test_minilm_matches_transformers_reference_file(minilm):
  """The Flax BERT on MiniLM-L6's weights gives transformers' hidden states (saved by
  tests/bert_reference.py) to 1e-4, and our tokenizer gives its ids."""
  folder, config, params = minilm
  ref = np.load(REFERENCE)
  vocab = text_tokenizer.BertTokenizer(folder)
  ids = vocab.encode_batch(list(bert_reference.REFERENCE_TEXTS), ref["ids"].shape[1])
  np.testing.assert_array_equal(ids, ref["ids"])
  hidden = _hidden_states(config, params, ids)
  mask = ref["mask"].astype(bool)
  for layer, expected in zip(ref["layers"], ref["hidden"]):
    np.testing.assert_allclose(np.asarray(hidden[layer])[mask], expected[mask], atol=1e-4)


def _reference_python():
  """A Python with torch + transformers: this one, or $MUSICLM_TORCH_PYTHON."""
  if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
    return sys.executable
  return os.environ.get("MUSICLM_TORCH_PYTHON")


def test_minilm_matches_transformers_live(minilm, tmp_path):
  """Every layer, computed now by transformers on torch (skipped without torch)."""
  python = _reference_python()
  if not python:
    pytest.skip("torch + transformers not installed (set MUSICLM_TORCH_PYTHON to a Python "
                "that has them)")
  folder, config, params = minilm
  out = str(tmp_path / "ref.npz")
  subprocess.run([python, os.path.join(harness.REPO, "tests", "bert_reference.py"), folder,
                  out], check=True, capture_output=True, timeout=300)
  ref = np.load(out)
  hidden = _hidden_states(config, params, ref["ids"])
  mask = ref["mask"].astype(bool)
  assert len(hidden) == config.num_hidden_layers + 1 == len(ref["layers"])
  for layer in ref["layers"]:
    np.testing.assert_allclose(np.asarray(hidden[layer])[mask], ref["hidden"][layer][mask],
                               atol=1e-4)


def test_tokenizer_is_the_same_in_python_and_tensorflow(minilm):
  vocab = text_vocabulary.BertVocabulary(minilm[0])
  texts = list(bert_reference.REFERENCE_TEXTS) + [
      "", "  Lo-fi hip-hop beat w/ vinyl crackle... 90bpm", "ÉLECTRONIQUE über Straße",
      "a " * 200]
  for text in texts:
    python_ids = vocab.tokenizer.encode(text)
    assert python_ids == vocab.encode_tf(tf.constant(text)).numpy().tolist()
    assert list(vocab.encode(text)) == python_ids       # seqio's Python path
  batch = vocab.tokenizer.encode_batch(texts, 12)
  assert batch.shape == (len(texts), 12) and batch.dtype == np.int32
  assert (batch[:, 0] == vocab.cls_id).all()
  assert batch[-1, -1] == vocab.sep_id                       # truncated, still closed
  assert batch[4].tolist()[:3] == [vocab.cls_id, vocab.sep_id, 0]   # empty caption
  with_tf = vocab.add_special_tokens_tf(vocab.encode_tf(tf.constant(texts[1])), 12)
  np.testing.assert_array_equal(with_tf.numpy(), batch[1][batch[1] != 0])
  # The vocab.txt-only path tokenizes alike.
  assert vocab.decode(batch[0]).startswith("a calm solo piano")


def test_folders_that_are_not_a_bert_give_clear_errors(minilm, tmp_path):
  folder = minilm[0]
  with pytest.raises(FileNotFoundError, match="config.json"):
    pretrained_bert.load_bert_folder(str(tmp_path))

  def copy(name, config_edit=None, weights=True):
    target = tmp_path / name
    target.mkdir()
    config = json.loads(open(os.path.join(folder, "config.json")).read())
    if config_edit:
      config.update(config_edit)
    (target / "config.json").write_text(json.dumps(config))
    if weights:
      shutil.copy(os.path.join(folder, "model.safetensors"), target)
    return str(target)

  with pytest.raises(ValueError, match="model_type is 't5'"):
    pretrained_bert.load_bert_folder(copy("t5", {"model_type": "t5"}))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    pretrained_bert.load_bert_folder(copy("noweights", weights=False))
  with pytest.raises(ValueError, match="encoder.layer.6.*missing"):
    pretrained_bert.load_bert_folder(copy("deeper", {"num_hidden_layers": 7}))
  with pytest.raises(ValueError, match="shape"):
    pretrained_bert.load_bert_folder(copy("wider", {"intermediate_size": 1024}))
  truncated = copy("truncated")
  path = os.path.join(truncated, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match="model.safetensors"):
    pretrained_bert.load_bert_folder(truncated)
  (tmp_path / "bad_json").mkdir()
  (tmp_path / "bad_json" / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    pretrained_bert.load_bert_folder(str(tmp_path / "bad_json"))
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    text_tokenizer.BertTokenizer(str(tmp_path / "bad_json"))


def test_padding_does_not_change_a_text_embedding(minilm):
  folder, config, params = minilm
  vocab = text_tokenizer.BertTokenizer(folder)
  short = vocab.encode_batch(["slow blues guitar"], 8)
  long = vocab.encode_batch(["slow blues guitar"], 24)
  pool = lambda ids: bert.mean_pool(_hidden_states(config, params, ids)[-1], jnp.asarray(ids))
  np.testing.assert_allclose(pool(short), pool(long), atol=1e-5)


def test_audio_towers_shapes_and_window_limit():
  batch, _ = fx.captioned_batch(2)
  for tower in ("ast", "resnet"):
    config = fx.tiny_config(audio_tower=tower, resnet_widths=(8, 16), resnet_blocks=(1, 1),
                            resnet_stem_width=8, resnet_groups=4)
    module = model_lib.MuLan(config)
    variables = module.init(jax.random.key(0), batch["audio"], batch["text_tokens"])
    out = module.apply(variables, batch["audio"], batch["text_tokens"])
    for key in ("audio", "text"):
      assert out[key].shape == (2, 16)
      np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, atol=1e-5)
    # Shorter than a window is fine; longer is the tokenizer's job (windows).
    short = module.apply(variables, batch["audio"][:, :8000], method=model_lib.MuLan.embed_audio)
    assert short.shape == (2, 16)
    with pytest.raises(ValueError, match="exceed one"):
      module.apply(variables, np.zeros((1, 20000), np.float32),
                   method=model_lib.MuLan.embed_audio)
  # Every parameter names its logical axes (so the partitioner can shard it).
  variables = model_lib.MuLan(fx.tiny_config()).init(jax.random.key(0), batch["audio"],
                                                     batch["text_tokens"])
  boxed = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in boxed)


def test_losses_and_retrieval_metrics():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  audio = jnp.asarray(unit(rng.normal(size=(8, 16))), jnp.float32)
  # Perfectly aligned pairs: InfoNCE near 0 at a large scale, recall 1.
  assert float(model_lib.softmax_contrastive_loss(audio, audio, 100.0)) < 1e-3
  metrics = model_lib.retrieval_metrics(model_lib.similarity(audio, audio))
  assert float(metrics["text_to_audio_recall@1"]) == 1.0
  # Embeddings that carry nothing (all identical): loss ln(B), recall@1 at most chance.
  same = jnp.broadcast_to(audio[:1], audio.shape)
  np.testing.assert_allclose(model_lib.softmax_contrastive_loss(same, same, 10.0), np.log(8),
                             rtol=1e-5)
  metrics = model_lib.retrieval_metrics(model_lib.similarity(same, audio))
  assert float(metrics["audio_to_text_recall@1"]) == 0.0  # ties count against
  assert float(metrics["chance_recall@5"]) == 5 / 8
  # A known ranking: text i's match ranks i-th among the audios.
  sim = np.full((6, 6), 0.0, np.float32)
  for i in range(6):
    sim[i, :i] = 0.9
    sim[i, i] = 0.5
  metrics = model_lib.retrieval_metrics(jnp.asarray(sim))
  np.testing.assert_allclose(metrics["text_to_audio_recall@1"], 1 / 6)
  np.testing.assert_allclose(metrics["text_to_audio_recall@5"], 5 / 6)
  # Sigmoid loss: positive, and lower when pairs align.
  aligned = model_lib.sigmoid_contrastive_loss(audio, audio, 10.0, -5.0)
  shuffled = model_lib.sigmoid_contrastive_loss(audio[::-1], audio, 10.0, -5.0)
  assert 0 < float(aligned) < float(shuffled)


@pytest.fixture(scope="module")
def tokenizer():
  model = fx.tiny_model()
  batch, _ = fx.captioned_batch(2)
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.key(0), {k: v.shape for k, v in batch.items()})["params"])
  return tokenizer_lib.MuLanTokenizer(model.config, params)


def test_long_audio_is_embedded_in_windows_and_averaged(tokenizer):
  cfg = tokenizer.config
  assert tokenizer_lib.window_offsets(16000, 16000, 16000).tolist() == [0]
  assert tokenizer_lib.window_offsets(40000, 16000, 16000).tolist() == [0, 16000, 24000]
  wave = np.concatenate([fx.captioned_batch(4)[0]["audio"][i] for i in range(4)])  # 4 s
  windows = tokenizer.window_embeddings(wave)
  assert windows.shape == (1, 4, cfg.embed_dim)  # stride 1 s, window 1 s
  direct = [np.asarray(tokenizer.embed_audio(wave[i * 16000:(i + 1) * 16000]))[0]
            for i in range(4)]
  np.testing.assert_allclose(windows[0], np.stack(direct), atol=1e-5)
  mean = np.mean(direct, axis=0)
  np.testing.assert_allclose(tokenizer.embed_audio(wave)[0], mean / np.linalg.norm(mean),
                             atol=1e-5)
  with pytest.raises(ValueError, match="NaN"):
    tokenizer.embed_audio(np.full(16000, np.nan, np.float32))


def test_rvq_tokens_shapes_ranges_and_file(tokenizer, tmp_path):
  paths = fx.sample_paths()
  from musiclm_jax.audio import io as audio_io
  windows = np.concatenate([tokenizer.window_embeddings(
      audio_io.load_audio(p, sample_rate=fx.SAMPLE_RATE))[0] for p in paths.values()])
  assert windows.shape[0] >= 16
  codebooks, report = tokenizer_lib.fit_rvq(windows, num_levels=4, codebook_size=16,
                                            num_steps=20, batch_size=64)
  assert codebooks.shape == (4, 16, 16)
  # More levels reconstruct better; the full RVQ removes most of the energy.
  codes = tokenizer_lib.encode_rvq(codebooks, windows)
  errors = [np.sum((windows - tokenizer_lib.decode_rvq(codebooks, codes[:, :q])) ** 2)
            for q in range(1, 5)]
  assert all(a > b for a, b in zip(errors, errors[1:]))
  assert report["relative_squared_error"] < 0.5
  path = str(tmp_path / "rvq.npz")
  tokenizer_lib.save_rvq(path, codebooks, **report)
  tokenizer.set_codebooks(tokenizer_lib.load_rvq(path))
  batch, captions = fx.captioned_batch(3)
  audio_tokens = tokenizer.audio_tokens(batch["audio"])
  text_tokens = tokenizer.text_tokens(captions)
  for tokens in (audio_tokens, text_tokens):
    assert tokens.shape == (3, 4) and tokens.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < 16
  scores = tokenizer.score(captions, batch["audio"])
  assert scores.shape == (3,) and np.all(np.abs(scores) <= 1 + 1e-5)
  with pytest.raises(ValueError, match="cannot initialise"):
    tokenizer_lib.fit_rvq(windows[:8], num_levels=2, codebook_size=16)
  open(path, "wb").write(b"PK\x03\x04 broken")
  with pytest.raises(ValueError, match="rvq.npz"):
    tokenizer_lib.load_rvq(path)


def test_gin_sizes():
  import gin
  from musiclm_jax import configurables, gin_config
  sizes = {}
  for size in ("tiny", "small", "paper"):
    gin.clear_config()
    try:
      configurables.import_configurables()
      gin_config.parse_gin_flags([f"mulan/{size}.gin"], ["TRAIN_STEPS = 10"], finalize=False)
      config = model_lib.MuLanConfig()
    finally:
      gin.clear_config()
    sizes[size] = model_lib.count_parameters(config)
    assert config.embed_dim == (16 if size == "tiny" else 128)
  assert sizes["paper"]["audio_tower"] > 80e6          # ViT-Base-sized AST
  assert sizes["small"]["text_encoder"] == sizes["paper"]["text_encoder"]  # MiniLM-L6
  assert 22e6 < sizes["paper"]["text_encoder"] < 23e6
  assert sizes["tiny"]["audio_tower"] < 1e5


def test_audio_token_bank_conditions_on_the_nearest_training_tuple(tmp_path):
  """Text embeddings map to the bank's tuple whose decoded embedding is nearest by cosine;
  the tuples are kept once each, and a damaged or mismatched file is named."""
  from musiclm_jax.mulan import audio_token_bank
  rng = np.random.default_rng(0)
  codebooks = rng.normal(size=(3, 8, 16)).astype(np.float32)
  clips = rng.integers(0, 8, size=(40, 3))
  bank = audio_token_bank.AudioTokenBank(np.concatenate([clips, clips[:5]]), codebooks)
  assert bank.tokens.shape == (len(np.unique(clips, axis=0)), 3)
  decoded = tokenizer_lib.decode_rvq(codebooks, clips)
  unit = decoded / np.linalg.norm(decoded, axis=1, keepdims=True)
  # A query near clip i's embedding (a little noise) comes back as clip i's tuple.
  query = unit + 0.01 * rng.normal(size=unit.shape)
  query /= np.linalg.norm(query, axis=1, keepdims=True)
  np.testing.assert_array_equal(bank.nearest(query), clips)
  # A query between two tuples gets the one with the higher cosine.
  between = 0.6 * unit[0] + 0.4 * unit[1]
  cosines = bank.embeddings @ between
  np.testing.assert_array_equal(bank.nearest(between[None])[0], bank.tokens[np.argmax(cosines)])
  path = str(tmp_path / "bank.npz")
  bank.save(path)
  np.testing.assert_array_equal(
      audio_token_bank.AudioTokenBank.load(path, codebooks).tokens, bank.tokens)
  with pytest.raises(ValueError, match="bank.npz: audio token bank holds codes outside"):
    audio_token_bank.AudioTokenBank.load(path, codebooks[:, :4])
  with pytest.raises(ValueError, match=r"must be \[batch, 16\]"):
    bank.nearest(np.ones((2, 8)))
  open(path, "wb").write(b"PK\x03\x04 broken")
  with pytest.raises(ValueError, match="bank.npz: unreadable MuLan audio token bank"):
    audio_token_bank.AudioTokenBank.load(path, codebooks)
