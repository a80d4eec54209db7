"""The Flax musicnn against TensorFlow running the `musicnn` package's own graph (its .meta
file, variables frozen from its checkpoint) on the same input, and the input features
against librosa's melspectrogram, which musicnn's extractor uses."""

import functools
import os

import numpy as np
import pytest

from musiclm_jax.evaluation import musicnn
from tests import soundstream_fixtures


@functools.lru_cache(maxsize=None)
def tagger(model: str) -> musicnn.MusicnnTagger:
  return musicnn.MusicnnTagger.load(model)


def tensorflow_reference(model: str, mel: np.ndarray) -> dict:
  """Runs the package's TF1 inference graph: the .meta graph cut to the outputs, its
  variables replaced by the checkpoint's values, batch norms in inference mode."""
  import tensorflow as tf
  from tensorflow.core.framework import attr_value_pb2
  from tensorflow.core.protobuf import meta_graph_pb2
  prefix = musicnn.package_checkpoint(model)
  meta = meta_graph_pb2.MetaGraphDef()
  with open(prefix + ".meta", "rb") as f:
    meta.ParseFromString(f.read())
  outputs = {"logits": "model/dense_1/BiasAdd:0",
             "penultimate": "model/dropout_1/cond/Merge:0"}   # dropout off: bn_dense
  graph_def = tf.compat.v1.graph_util.extract_sub_graph(
      meta.graph_def, [name.split(":")[0] for name in outputs.values()])
  reader = tf.compat.v1.train.NewCheckpointReader(prefix)
  for node in graph_def.node:
    node.attr.pop("_output_shapes", None)   # stale shapes in the 2019 graph
    if node.op == "VariableV2":
      dtype = node.attr["dtype"]
      node.op = "Const"
      node.ClearField("attr")
      node.attr["dtype"].CopyFrom(dtype)
      node.attr["value"].CopyFrom(attr_value_pb2.AttrValue(
          tensor=tf.make_tensor_proto(reader.get_tensor(node.name))))
  graph = tf.Graph()
  with graph.as_default():
    tf.import_graph_def(graph_def, name="")
  with tf.compat.v1.Session(graph=graph) as session:
    values = session.run(list(outputs.values()),
                         {"model/Placeholder:0": mel, "model/Placeholder_2:0": False})
  return dict(zip(outputs, values))


@pytest.mark.parametrize("model", ["MTT_musicnn", "MSD_musicnn"])
def test_flax_musicnn_matches_tensorflow(model):
  clips = soundstream_fixtures.real_clips()   # a real drum loop, 8 x 0.2 s
  audio = np.concatenate(list(clips))[None]    # 1.6 s
  audio = np.concatenate([audio, 0.5 * audio[:, ::-1]], axis=1)  # 3.2 s: one full patch
  patches, count = tagger(model).patches(np.concatenate([audio, 0.3 * audio]))
  assert patches.shape == (2, musicnn.PATCH_FRAMES, musicnn.NUM_MELS) and count == 1
  ours = tagger(model).apply_mel(patches)
  theirs = tensorflow_reference(model, patches)
  for key in ("logits", "penultimate"):
    np.testing.assert_allclose(ours[key], theirs[key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_input_features_match_librosa():
  import librosa
  audio = soundstream_fixtures.real_clips()[:2]
  ours = np.asarray(musicnn.mel_power(audio))
  theirs = np.stack([librosa.feature.melspectrogram(
      y=a, sr=16000, hop_length=musicnn.HOP, n_fft=musicnn.FFT_SIZE, n_mels=96).T
      for a in audio])
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4 * theirs.max())


def test_tags_of_a_drum_loop_name_drums_and_damaged_checkpoints_are_refused(tmp_path):
  audio = np.tile(np.concatenate(list(soundstream_fixtures.real_clips())), 2)[None]
  tags = tagger("MTT_musicnn").embed_clips(audio)["tags"][0]
  top = [musicnn.MTT_LABELS[i] for i in np.argsort(-tags)[:5]]
  assert {"drums", "beat", "beats", "techno", "electronic"} & set(top), top
  with pytest.raises(FileNotFoundError, match="index missing"):
    musicnn.variables_from_checkpoint(str(tmp_path / "nothing"))
  prefix = musicnn.package_checkpoint("MTT_musicnn")
  for name in (".index", ".data-00000-of-00001"):
    data = open(prefix + name, "rb").read()
    (tmp_path / name).write_bytes(data[:len(data) // 2])   # truncated
  with pytest.raises(ValueError, match="unreadable TensorFlow checkpoint|lacks the tensor"):
    musicnn.variables_from_checkpoint(os.path.join(str(tmp_path), ""))
