#!/bin/bash
# Puts here what benchmarks/accelerator_checks.sh needs on a GPU machine that has no
# network: wheels for Python 3.12 missing from its image (.whl) and real audio (.gpu).
# Both folders are git-ignored (.git/info/exclude); name them in the device call's carry.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
version() { $PY -m pip show "$1" | awk '/^Version/{print $2}'; }
# Not flax or optax: the image's own match its jax (0.11.2 when last seen, newer than this
# mirror has), and the run records their versions.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "gin-config==$(version gin-config)" "soundfile==$(version soundfile)" \
  "cffi==$(version cffi)" "pycparser==$(version pycparser)" "soxr==$(version soxr)"
$PY benchmarks/w2v_bert_learning.py prepare --out .gpu/train_24k
# codec_speed.py's clip: one wesnoth track in a Debian cache of its own
music=usr/share/games/wesnoth/1.16/data/core/music
src=$($PY -c "from musiclm_jax.audio import debian_music as d; print(d.fetch('wesnoth-1.16-music'))")
mkdir -p ".gpu/debian/wesnoth-1.16-music/$music"
cp "$src/.complete" .gpu/debian/wesnoth-1.16-music/
cp "$src/$music/battle-epic.ogg" ".gpu/debian/wesnoth-1.16-music/$music/"
du -sh .whl .gpu
