"""The commands' persistent compilation cache: a rerun reads its programs back, a broken entry is compiled again,
the user's choice (off, or JAX's own cache folder) wins."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from gptjax import compilation_cache
from tests import train_helpers

ROOT = pathlib.Path(__file__).parents[1]


def _entries(folder: pathlib.Path) -> dict[str, bytes]:
  """Cache entry name -> its last-access stamp (JAX rewrites the stamp at every read of a size-limited cache)."""
  return {p.name[:-len("-cache")]: (folder / (p.name[:-len("-cache")] + "-atime")).read_bytes()
          for p in folder.glob("*-cache")}


def test_a_training_run_again_reads_its_programs_back_and_a_broken_entry_is_compiled_again(tmp_path):
  config_file = train_helpers.write_config_file(tmp_path)
  cache = tmp_path / "xla"
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR",
                                                          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  env.update(PYTHONPATH=str(ROOT), GPTJAX_COMPILATION_CACHE=str(cache))

  def train(name):
    workdir = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "gptjax.train", f"--config={config_file}", f"--workdir={workdir}",
                           "--config.train.steps=2", "--config.opt.warmup_steps=1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [m["loss"] for m in train_helpers.read_metrics(workdir) if "loss" in m], done.stderr

  first_losses, _ = train("first")
  first = _entries(cache)
  assert first, f"the first run cached nothing in {cache}"  # At least the training step (compiles >= 0.2 s).

  second_losses, _ = train("second")
  second = _entries(cache)
  assert second.keys() == first.keys()  # Nothing compiled afresh ...
  assert all(second[k] != first[k] for k in first)  # ... and every entry read back.
  assert second_losses == first_losses  # The same programs: the same run, bit for bit.

  for key in first:  # As a run killed while writing would leave them.
    path = cache / f"{key}-cache"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  third_losses, stderr = train("third")
  assert third_losses == first_losses
  assert "Error reading persistent compilation cache entry" in stderr


def test_off_leaves_the_cache_off(monkeypatch):
  for value in ("off", "0", "none", "False", ""):
    monkeypatch.setenv(compilation_cache.ENV, value)
    assert compilation_cache.enable() is None


def test_the_users_own_jax_cache_folder_is_kept(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation_cache.ENV, raising=False)
  before = jax.config.jax_compilation_cache_dir
  users = before or str(tmp_path / "users")  # As JAX_COMPILATION_CACHE_DIR would have set it.
  jax.config.update("jax_compilation_cache_dir", users)
  try:
    assert compilation_cache.enable(tmp_path / "other") == users
    assert jax.config.jax_compilation_cache_dir == users
    assert not (tmp_path / "other").exists()
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_default_folder_is_per_cpu_and_a_bad_size_is_named(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  folder = compilation_cache.default_directory()
  assert folder.parent == tmp_path / "gptjax" / "xla"
  assert folder.name == compilation_cache.host_key() == compilation_cache.host_key()  # Stable for this machine.
  monkeypatch.setenv(compilation_cache.MAX_BYTES_ENV, "2GB")
  with pytest.raises(ValueError, match=r"GPTJAX_COMPILATION_CACHE_MAX_BYTES='2GB' must be an integer"):
    compilation_cache._max_bytes()  # pylint: disable=protected-access


_COMPILE = """
import sys, warnings
import jax, jax.numpy as jnp
warnings.simplefilter("error")  # JAX reports a failed cache write as a warning.
if sys.argv[2] == "jax":  # The folder used as JAX's plain cache, without a size limit.
  jax.config.update("jax_compilation_cache_dir", sys.argv[1])
else:
  from gptjax import compilation_cache
  assert compilation_cache.enable(sys.argv[1]) == sys.argv[1]
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.jit(lambda x: jnp.sin(x) * len(sys.argv[2]))(jnp.ones(5)).block_until_ready()
"""


def test_a_folder_first_used_as_jax_plain_cache_takes_new_entries(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in (compilation_cache.ENV, "JAX_COMPILATION_CACHE_DIR")}
  env["PYTHONPATH"] = str(ROOT)
  folder = tmp_path / "xla"
  for mode in ("jax", "gptjax"):
    done = subprocess.run([sys.executable, "-c", _COMPILE, str(folder), mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
  assert len(list(folder.glob("jit__lambda-*-cache"))) == 2  # The second run's program was written too.
  assert all(p.with_name(p.name[:-len("-cache")] + "-atime").exists() for p in folder.glob("*-cache"))
