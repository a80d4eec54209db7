"""musiclm-jax: MusicLM (text-to-music) in JAX/Flax, built T5X-style."""

import os as _os

# TensorFlow only feeds the input pipelines (SeqIO/TFDS): silence its C++ start-up chatter
# (CUDA probing, oneDNN notices) unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
