"""Cloud paths (gptjax/paths.py): a `gs://` workdir is a bucket, never a local folder named `gs:`.

The unit tests check the path helpers on local folders (where behaviour must stay what it was). The runs train,
resume and load through a Google Cloud Storage emulator (tests/fake_gcs.py): workdir, checkpoints (orbax, its
arrays written by tensorstore's gs driver), tokenizer, token cache, metrics and TensorBoard events all land in the
emulated bucket, and the resumed run equals an uninterrupted local one bit for bit.
"""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

import gptjax
from gptjax import checkpoint
from gptjax import data
from gptjax import metrics as metrics_lib
from gptjax import paths
from gptjax import tokenizer as tokenizer_lib
from gptjax.train import guards
from gptjax.train import loop
from tests import fake_gcs
from tests import tiny_lm
from tests import train_helpers
from tests.train_helpers import tiny_config

train_helpers.enable_compilation_cache()
TIMING = ("tokens_per_sec", "step_time_s", "mfu")


# ---- The helpers, on local folders -----------------------------------------------------------------------------


def test_uris_stay_uris_and_local_paths_become_absolute(tmp_path, monkeypatch):
  assert str(paths.path("gs://bucket/run")) == "gs://bucket/run"
  assert str(paths.path("gs://bucket/run") / "checkpoints" / "3") == "gs://bucket/run/checkpoints/3"
  assert str(paths.path(paths.path("s3://b/x"))) == "s3://b/x"
  monkeypatch.chdir(tmp_path)
  assert str(paths.path("run")) == str(tmp_path / "run")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert str(paths.path("~/run")) == str(tmp_path / "run")
  with pytest.raises(ValueError, match=r"Unsupported path 'ftp://host/run': .*gs://, s3://"):
    paths.path("ftp://host/run")


def test_write_atomic_replaces_whole_and_leaves_no_temporary_file(tmp_path):
  target = tmp_path / "config.json"
  paths.write_atomic(target, "old")
  paths.write_atomic(target, b"new")
  assert target.read_text() == "new" and os.listdir(tmp_path) == ["config.json"]


def test_upload_and_download_copy_every_file_and_check_the_marker(tmp_path):
  source = tmp_path / "source"
  (source / "sub").mkdir(parents=True)
  for name, text in (("a.txt", "a"), ("sub/b.txt", "b"), ("done", "")):
    (source / name).write_text(text)
  assert paths.files_under(source) == ["a.txt", "done", "sub/b.txt"]
  paths.upload_dir(source, tmp_path / "copy", last="done")
  paths.download_dir(tmp_path / "copy", tmp_path / "back", names=["sub/b.txt"])
  assert paths.files_under(tmp_path / "copy") == ["a.txt", "done", "sub/b.txt"]
  assert (tmp_path / "back" / "sub" / "b.txt").read_text() == "b" and paths.files_under(tmp_path / "back") == [
      "sub/b.txt"]
  with pytest.raises(FileNotFoundError, match="marker"):
    paths.upload_dir(source, tmp_path / "other", last="missing")
  assert paths.files_under(tmp_path / "nothing") == []


# ---- Through the emulated bucket ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket():
  fake_gcs.start()
  return f"gs://{fake_gcs.BUCKET}"


def _strip(records):
  return [{k: v for k, v in m.items() if k not in TIMING} for m in records]


def _cloud_metrics(workdir: str) -> list[dict]:
  return [json.loads(line) for line in (paths.path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_a_run_trains_resumes_and_loads_from_the_bucket_alone(bucket, tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)  # A path mangled by pathlib would show up here as a folder named 'gs:'.
  local_cache = tmp_path / "local_tokens"
  monkeypatch.setattr(data, "DEFAULT_CACHE_DIR", str(local_cache))  # Where a cloud cache is mirrored.
  workdir, tokens = f"{bucket}/runs/tiny", f"{bucket}/tokens"
  settings = {"train.tensorboard": True, "checkpoint.async_save": True}

  def config(steps):
    c = tiny_config(tmp_path, **settings, **{"train.steps": steps, "opt.decay_steps": 6})
    c.data.cache_dir = tokens
    return c

  first = loop.train_and_evaluate(config(3), workdir)
  assert first["step"] == 3
  names = fake_gcs.object_names("runs/tiny/")
  for expected in ("runs/tiny/config.json", "runs/tiny/metrics.jsonl", "runs/tiny/checkpoints/3/commit_success.txt",
                   "runs/tiny/tokenizer/gptjax_data_spec.json", "runs/tiny/tokenizer/tokenizer.json"):
    assert expected in names, (expected, names)
  assert any(n.startswith("runs/tiny/checkpoints/3/params/") for n in names)  # Tensorstore's array data.
  assert any(n.startswith("runs/tiny/tensorboard/events.out.tfevents.") for n in names)
  assert "runs/tiny/run.lock" not in names  # Released.
  (key,) = {n.split("/")[1] for n in fake_gcs.object_names("tokens/")}
  assert fake_gcs.object_names(f"tokens/{key}/") == [f"tokens/{key}/{f}" for f in ("meta.json", "train.bin",
                                                                                      "val.bin")]
  # The resume on a machine without the local copy: the token cache comes back from the bucket.
  shutil.rmtree(local_cache)
  with caplog.at_level(logging.INFO):
    second = loop.train_and_evaluate(config(6), workdir)
  assert second["step"] == 6 and (local_cache / key / "meta.json").is_file()
  assert f"Copied token cache {tokens}/{key} to {local_cache / key}" in caplog.text  # Not tokenised again.
  assert "gs:" not in os.listdir(tmp_path)

  # The same 6 steps uninterrupted on a local disk: the bucket's run equals it, line for line and bit for bit.
  local = tmp_path / "local_run"
  straight = tiny_config(tmp_path, **settings, **{"train.steps": 6, "opt.decay_steps": 6})
  loop.train_and_evaluate(straight, local)
  assert _strip(_cloud_metrics(workdir)) == _strip(train_helpers.read_metrics(local))
  lm = gptjax.load(workdir)
  assert str(lm.workdir) == workdir and lm.tokenizer.decode(lm.tokenizer.encode("the cat")) == "the cat"
  jax.tree.map(np.testing.assert_array_equal, lm.params, gptjax.load(local).params)
  ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", read_only=True)
  assert str(ckpt.directory) == str(ckpt.manager.directory) == f"{workdir}/checkpoints"  # orbax's own path too.
  assert ckpt.all_steps() == [3, 6]
  ckpt.close()
  # TensorBoard in the bucket: each step's point once, the run's config once (the resumed run's own).
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  losses, configs = [], []
  for path in paths.path(f"{workdir}/tensorboard").glob("events.out.tfevents.*"):
    for record in metrics_lib.read_tfrecords(path):
      event = event_pb2.Event.FromString(record)
      losses += [event.step for v in event.summary.value if v.tag == "train_loss"]
      configs += [event.step for v in event.summary.value if v.tag.startswith(metrics_lib.CONFIG_TAG)]
  assert sorted(losses) == list(range(1, 7)) and configs == [3]


def test_a_second_run_on_a_cloud_workdir_in_use_is_refused(bucket, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  workdir = f"{bucket}/runs/locked"
  lock = guards.WorkdirLock(workdir)
  lock.acquire()
  try:
    assert f"runs/locked/{guards.LOCK_FILE}" in fake_gcs.object_names("runs/locked/")
    with pytest.raises(guards.WorkdirLockedError, match=f"workdir {workdir} is in use by process {os.getpid()}"):
      guards.WorkdirLock(workdir).acquire()
  finally:
    lock.release()
  assert fake_gcs.object_names("runs/locked/") == []
  assert "gs:" not in os.listdir(tmp_path)


def test_hugging_face_folders_and_tokenizers_save_to_and_load_from_the_bucket(bucket, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Where a mangled path would write (and then read back) a folder 'gs:'.
  tokenizer = tokenizer_lib.train_bpe(tiny_lm.CORPUS, 300)
  lm = tiny_lm.text_lm(tokenizer)
  folder = lm.save(f"{bucket}/exports/tiny")
  assert str(folder) == f"{bucket}/exports/tiny"
  assert {"exports/tiny/config.json", "exports/tiny/model.safetensors",
          "exports/tiny/tokenizer.json"} <= set(fake_gcs.object_names("exports/tiny/"))
  again = gptjax.load(f"{bucket}/exports/tiny")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.params), jax.device_get(lm.params))
  text = tiny_lm.CORPUS[0]
  assert gptjax.load_tokenizer(f"{bucket}/exports/tiny").encode(text) == tokenizer.encode(text)
  with pytest.raises(FileNotFoundError, match=f"No such model folder: {bucket}/exports/missing"):
    gptjax.load(f"{bucket}/exports/missing")
  assert os.listdir(tmp_path) == []
