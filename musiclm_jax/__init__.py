"""musiclm-jax: MusicLM (text-to-music) in JAX/Flax, built T5X-style."""

import os as _os

# TensorFlow only feeds the input pipelines (SeqIO/TFDS): silence its C++ start-up chatter
# (CUDA probing, oneDNN notices) unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Where a CUDA-enabled TensorFlow is installed, it would reserve most of each GPU's memory on
# its first op and starve JAX: let it take only what it uses (the training entry points also
# hide the GPUs from it, `training.data.hide_gpus_from_tensorflow`).
_os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

__version__ = "0.1.0"
