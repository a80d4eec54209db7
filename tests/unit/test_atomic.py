"""Every writer goes through `atomic` (and `arrays_file`): complete or absent, never a
temporary left behind, permissions from the umask."""

import os
import stat

import numpy as np
import pytest

from musiclm_jax import arrays_file, atomic


@pytest.fixture
def umask_027():
  old = os.umask(0o027)
  yield
  os.umask(old)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask_027):
  atomic.atomic_write_text(str(tmp_path / "a.txt"), "hello")
  assert _mode(tmp_path / "a.txt") == 0o640   # not mkstemp's private 0600
  with atomic.atomic_directory(str(tmp_path / "run")) as tmp:
    atomic.atomic_write_bytes(os.path.join(tmp, "b.bin"), b"\x00")
  assert _mode(tmp_path / "run") == 0o750     # not mkdtemp's private 0700
  assert _mode(tmp_path / "run" / "b.bin") == 0o640
  assert (tmp_path / "a.txt").read_text() == "hello"


def test_a_failed_write_leaves_the_old_version_and_no_temporary(tmp_path):
  path = str(tmp_path / "out.npy")
  atomic.atomic_write_text(path, "old")
  with pytest.raises(RuntimeError):
    with atomic.atomic_file(path, suffix=".npy") as tmp:
      np.save(tmp, np.zeros(3))
      raise RuntimeError("killed mid-write")
  assert open(path).read() == "old"
  with pytest.raises(RuntimeError):
    with atomic.atomic_directory(str(tmp_path / "folder")) as tmp:
      atomic.atomic_write_text(os.path.join(tmp, "x"), "partial")
      raise RuntimeError("killed mid-write")
  assert sorted(os.listdir(tmp_path)) == ["out.npy"]


def test_arrays_file_round_trip_and_errors_name_the_file(tmp_path):
  path = str(tmp_path / "state.npz")
  arrays_file.save_arrays(path, {"centroids": np.ones((4, 2), np.float32)}, layer=7)
  arrays, metadata = arrays_file.load_arrays(path, "k-means state", ["centroids"])
  np.testing.assert_array_equal(arrays["centroids"], np.ones((4, 2)))
  assert metadata == {"layer": 7}
  with pytest.raises(ValueError, match=r"state.npz: not a k-means state \(missing \['counts'\]"):
    arrays_file.load_arrays(path, "k-means state", ["centroids", "counts"])
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="bad.npz: unreadable MuLan RVQ file"):
    arrays_file.load_arrays(str(tmp_path / "bad.npz"), "MuLan RVQ file")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    arrays_file.load_arrays(str(tmp_path / "missing.npz"), "MuLan RVQ file")
  assert sorted(os.listdir(tmp_path)) == ["bad.npz", "state.npz"]
