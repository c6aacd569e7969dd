"""The loop (gptjax/train/loop.py): early stopping (both directions, state round trip), and whole runs: resume
checks, early stopping kept in the checkpoint, logs cut back on resume, unreadable checkpoints, profiling."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest

from gptjax import checkpoint
from gptjax import metrics as metrics_lib
from gptjax.train import guards
from gptjax.train import loop
from tests import train_helpers
from tests.train_helpers import read_metrics, tiny_config

train_helpers.enable_compilation_cache()
TIMING = ("tokens_per_sec", "step_time_s", "mfu")


def test_best_evaluation_is_kept_and_early_stopping_counts_evaluations_without_improvement():
  early = loop.EarlyStopping(patience=2, min_delta=0.01, mode="max")
  improved = [early.update(step, acc, {"val_accuracy": acc}) for step, acc in ((10, 0.70), (20, 0.80), (30, 0.805),
                                                                               (40, 0.85))]
  assert improved == [True, True, False, True]  # 0.805 is within min_delta of 0.80: no improvement.
  assert (early.state["best_step"], early.state["best"], early.stopped) == (40, 0.85, False)
  early.update(50, 0.84, {})
  assert not early.stopped
  # The state is what a checkpoint stores: a copy restored from it goes on counting where the first one was.
  resumed = loop.EarlyStopping(patience=2, min_delta=0.01, mode="max", state=dict(early.state))
  resumed.update(60, 0.80, {})
  assert resumed.stopped and resumed.state["best_step"] == 40 and resumed.state["since_best"] == 2
  assert resumed.state["best_record"] == {"val_accuracy": 0.85}
  never = loop.EarlyStopping(patience=0, min_delta=0.0, mode="min")
  for step in range(5):
    never.update(step, 1.0, {})
  assert not never.stopped and never.state["since_best"] == 4
  losses = loop.EarlyStopping(patience=1, min_delta=0.0, mode="min")
  assert losses.update(1, 2.0, {}) and losses.update(2, 1.5, {}) and not losses.update(3, 1.7, {})
  assert losses.stopped


# ---- Runs ------------------------------------------------------------------------------------------------------


def _strip(records):
  return [{k: v for k, v in m.items() if k not in TIMING} for m in records]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("loop")


@pytest.fixture(scope="module")
def straight(root):
  """6 uninterrupted steps, evaluated and saved at 3 and 6, TensorBoard on."""
  workdir = root / "straight"
  loop.train_and_evaluate(tiny_config(root, **{"train.tensorboard": True}), workdir)
  return workdir


def test_a_resume_that_changes_the_architecture_or_the_data_is_refused_naming_each_field(root, straight):
  workdir = root / "changed"
  shutil.copytree(straight, workdir)
  with pytest.raises(guards.ResumeMismatchError, match=r"Resuming step 6 of .* model.emb_dim: 32 in the checkpoint, "
                                                       r"64 now.*allow_resume_changes=True"):
    loop.train_and_evaluate(tiny_config(root, **{"model.emb_dim": 64, "train.steps": 8}), workdir)
  with pytest.raises(guards.ResumeMismatchError, match=r"data.tokenizer: 'char' in the checkpoint, 'bpe:40' now"):
    loop.train_and_evaluate(tiny_config(root, **{"data.tokenizer": "bpe:40", "train.steps": 8}), workdir)
  # Same source string, other corpus content: the files behind the glob changed.
  other = root / "other_corpus"
  train_helpers.write_corpus(other)
  for path in other.glob("*.txt"):
    path.write_text(path.read_text().replace("cat", "eel"))
  config = tiny_config(root, **{"data.source": f"text:{other}/*.txt", "train.steps": 8})
  with pytest.raises(guards.ResumeMismatchError, match=r"data.source: .* in the checkpoint"):
    loop.train_and_evaluate(config, workdir)
  moved = root / "changed_content"
  shutil.copytree(straight, moved)
  shutil.rmtree(root / "corpus_backup", ignore_errors=True)
  shutil.copytree(root / "corpus", root / "corpus_backup")
  try:
    for path in (root / "corpus").glob("*.txt"):
      path.write_text(path.read_text().replace("cat", "eel"))
    with pytest.raises(guards.ResumeMismatchError, match=r"corpus.train: '[0-9a-f]+' in the checkpoint, '[0-9a-f]+' now"):
      loop.train_and_evaluate(tiny_config(root, **{"train.steps": 8}), moved)
    # The explicit override goes on (warning), and trains the two new steps on the new text.
    result = loop.train_and_evaluate(tiny_config(root, **{"train.steps": 8, "checkpoint.allow_resume_changes": True}),
                                     moved)
    assert result["step"] == 8
  finally:
    shutil.rmtree(root / "corpus")
    shutil.copytree(root / "corpus_backup", root / "corpus")
  assert not (workdir / "checkpoints" / "8").exists()  # The refused resumes trained nothing.


def test_early_stopping_lives_in_the_checkpoint(root):
  # lr 0: the validation loss never improves after the first evaluation; patience 2 stops at step 3.
  settings = {"opt.lr": 0.0, "train.steps": 20, "train.eval_every": 1, "eval.early_stop_patience": 2,
              "checkpoint.every_steps": 1}
  workdir = root / "early"
  assert loop.train_and_evaluate(tiny_config(root, **settings), workdir)["step"] == 3
  # The same command again does not train on.
  again = loop.train_and_evaluate(tiny_config(root, **settings), workdir)
  assert again["step"] == 3 and again["best_val_loss"] == read_metrics(workdir)[0]["val_loss"]
  assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3]
  # Interrupted after step 2 (one evaluation without improvement), then resumed: patience continues, so the run
  # still stops at step 3, not at step 4 as a fresh count would.
  interrupted = root / "early_interrupted"
  loop.train_and_evaluate(tiny_config(root, **{**settings, "train.steps": 2, "opt.decay_steps": 20}), interrupted)
  result = loop.train_and_evaluate(tiny_config(root, **{**settings, "opt.decay_steps": 20}), interrupted)
  assert result["step"] == 3


def test_a_resume_drops_the_logged_points_past_the_restored_step(root, straight):
  # A run killed after logging steps 4-6 but before step 6's checkpoint was complete (and mid-way through writing
  # a metrics line): it resumes from step 3 and logs 4-6 again, each step once in metrics.jsonl and TensorBoard.
  workdir = root / "relogged"
  shutil.copytree(straight, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "train_lo')
  loop.train_and_evaluate(tiny_config(root, **{"train.tensorboard": True}), workdir)
  assert _strip(read_metrics(workdir)) == _strip(read_metrics(straight))
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  points = []
  for path in (workdir / "tensorboard").glob("events.out.tfevents.*"):
    for data in metrics_lib.read_tfrecords(path):
      event = event_pb2.Event.FromString(data)
      points += [(value.tag, event.step) for value in event.summary.value if value.tag == "train_loss"]
  assert sorted(points) == [("train_loss", s) for s in range(1, 7)]


def test_a_complete_looking_but_unreadable_checkpoint_falls_back_to_the_previous_step(root, straight, caplog):
  workdir = root / "corrupt"
  shutil.copytree(straight, workdir)
  # Step 6 keeps every file and its commit marker, but its parameter data is garbage (a bad disk, a bad copy).
  for path in (workdir / "checkpoints" / "6" / "params").rglob("*"):
    if path.is_file() and not path.name.startswith("_"):
      path.write_bytes(b"\0garbage" * 16)
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(tiny_config(root), workdir)
  warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert "Checkpoint step 6 in" in warnings and "item 'params' cannot be read" in warnings
  assert "Falling back to step 3" in warnings
  assert (workdir / "checkpoints" / "6.unreadable-0").is_dir()
  # Steps 4-6 were trained again from step 3: the same result as the uninterrupted run, bit for bit.
  _, resumed, _ = checkpoint.load_workdir(workdir)
  _, expected, _ = checkpoint.load_workdir(straight)
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)
  # With no earlier step to fall back to, the error names the step and the item.
  lone = root / "corrupt_lone"
  shutil.copytree(workdir, lone)
  for step in ("3", "6.unreadable-0"):
    shutil.rmtree(lone / "checkpoints" / step)
  for path in (lone / "checkpoints" / "6" / "opt_state").rglob("*"):
    if path.is_file() and not path.name.startswith("_"):
      path.write_bytes(b"\0garbage" * 16)
  with pytest.raises(ValueError, match=r"Checkpoint step 6 in .*: item 'opt_state' cannot be read"):
    loop.train_and_evaluate(tiny_config(root, **{"train.steps": 8}), lone)


def test_profile_steps_write_a_trace_under_tensorboard(root):
  workdir = root / "profiled"
  loop.train_and_evaluate(tiny_config(root, **{"train.steps": 3, "train.profile_steps": (2, 3)}), workdir)
  traces = list((workdir / "tensorboard").rglob("*.xplane.pb"))
  assert traces and all(t.stat().st_size > 0 for t in traces)
  config = json.loads((workdir / checkpoint.CONFIG_FILE).read_text())
  assert config["train"]["profile_steps"] == [2, 3] and not list(workdir.glob(".*tmp*"))
