"""Real music from Debian packages (no model hub or web here, but Debian's archive is).

  sonic-pi-samples      CC0 loops and one-shots, 170 FLAC files, 21 MB: tests.
  wesnoth-1.16-music    41 OGG tracks, 128 minutes: small training runs.
  supertuxkart-data, singularity-music: more OGG music.

`fetch('sonic-pi-samples')` downloads the .deb with `apt-get download` (no root, no install)
and unpacks it with `dpkg-deb -x` into a cache folder, once.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "musiclm_jax", "debian")


def fetch(package: str, cache_dir: str | None = None) -> str:
  """Unpacked package root (cached). Raises RuntimeError naming the failing command."""
  cache_dir = cache_dir or os.environ.get("MUSICLM_JAX_DEBIAN_CACHE", DEFAULT_CACHE)
  root = os.path.join(cache_dir, package)
  if os.path.isfile(os.path.join(root, ".complete")):
    return root
  for tool in ("apt-get", "dpkg-deb"):
    if shutil.which(tool) is None:
      raise RuntimeError(f"fetching Debian package {package!r} needs {tool!r}, not found")
  os.makedirs(cache_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
    try:
      _run(["apt-get", "download", package], cwd=tmp, package=package)
    except RuntimeError:
      # A fresh machine may have empty package lists: refresh them once (needs root).
      if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise
      _run(["apt-get", "update", "-qq"], cwd=tmp, package=package)
      _run(["apt-get", "download", package], cwd=tmp, package=package)
    debs = glob.glob(os.path.join(tmp, "*.deb"))
    if len(debs) != 1:
      raise RuntimeError(f"apt-get download {package} produced {debs}")
    unpacked = os.path.join(tmp, "root")
    _run(["dpkg-deb", "-x", debs[0], unpacked], cwd=tmp, package=package)
    open(os.path.join(unpacked, ".complete"), "w").close()
    if os.path.isfile(os.path.join(root, ".complete")):
      return root  # another process (a parallel test worker) fetched it meanwhile: keep it
    if os.path.exists(root):
      shutil.rmtree(root)  # a leftover without its .complete mark
    try:
      os.replace(unpacked, root)  # complete or absent: a crash never leaves half a package
    except OSError:
      if not os.path.isfile(os.path.join(root, ".complete")):
        raise
  return root


def _run(cmd, cwd, package):
  result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed for {package!r}: {result.stderr.strip()}")


def audio_files(root: str) -> list[str]:
  """Every audio file under root, sorted."""
  return sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                if p.lower().endswith(AUDIO_EXTENSIONS) and os.path.isfile(p))
