"""TensorBoard (gptjax/metrics.py MetricWriter): the config as text and as hparams, one copy of each after a resume.

The event files are read back with TensorBoard's own reader (EventAccumulator) and its hparams protos, as the
TensorBoard app would read them; the text is rendered with its own markdown renderer.
"""

import json
import pathlib
import subprocess
import sys

import pytest
from tensorboard import plugin_util
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from gptjax import metrics as metrics_lib
from gptjax.train import loop
from tests import train_helpers
from tests.train_helpers import tiny_config

train_helpers.enable_compilation_cache()


def _events(workdir):
  """{tag: [(step, value)]} for every summary of every event file, no point merged or dropped."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  found = {}
  for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
    for record in metrics_lib.read_tfrecords(path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        found.setdefault(value.tag, []).append((event.step, value))
  return found


def _accumulator(workdir):
  # purge_orphaned_data=False: what the files hold, not what TensorBoard would keep of it.
  accumulator = event_accumulator.EventAccumulator(str(workdir / "tensorboard"), purge_orphaned_data=False,
                                                   size_guidance={event_accumulator.TENSORS: 0,
                                                                  event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return accumulator


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
  """3 steps, then the same command with train.steps=6 resumes to 6; TensorBoard on."""
  root = tmp_path_factory.mktemp("tensorboard")
  workdir = root / "run"
  settings = {"train.tensorboard": True, "opt.decay_steps": 6}
  loop.train_and_evaluate(tiny_config(root, **settings, **{"train.steps": 3}), workdir)
  first = _events(workdir)
  result = loop.train_and_evaluate(tiny_config(root, **settings, **{"train.steps": 6}), workdir)
  return workdir, first, result


def test_the_config_is_one_markdown_code_block_that_tensorboard_renders(resumed):
  workdir, first, _ = resumed
  assert [step for step, _ in first["config/text_summary"]] == [0]  # The first run's, at its start.
  accumulator = _accumulator(workdir)
  (text,) = accumulator.Tensors("config/text_summary")  # After the resume: one copy, the resumed run's.
  assert text.step == 3
  markdown = text.tensor_proto.string_val[0].decode()
  assert markdown.startswith("```json\n") and markdown.endswith("\n```")
  config = json.loads(markdown[len("```json\n"):-len("\n```")])
  assert config == json.loads((workdir / "config.json").read_text()) and config["train"]["steps"] == 6
  html = plugin_util.markdown_to_safe_html(markdown)
  assert html.startswith("<pre><code>") and "&quot;num_layers&quot;: 2" in html


def test_hparams_hold_every_setting_and_the_run_ends_with_its_best_metric(resumed):
  workdir, _, result = resumed
  accumulator = _accumulator(workdir)
  content = accumulator.PluginTagToContent("hparams")
  events = _events(workdir)
  for tag in ("_hparams_/session_start_info", "_hparams_/session_end_info"):
    assert len(events[tag]) == 1, (tag, events[tag])  # One copy after the resume.
  start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
  hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
  assert hparams["model.num_layers"] == 2 and hparams["train.steps"] == 6 and hparams["data.tokenizer"] == "char"
  assert hparams["train.tensorboard"] is True and hparams["opt.lr"] == pytest.approx(1e-2)
  config = json.loads((workdir / "config.json").read_text())
  assert set(hparams) == set(metrics_lib.hparam_values(config))  # Every setting but the None ones.
  end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
  assert end.status == api_pb2.Status.Value("STATUS_SUCCESS")
  # No experiment summary: the HParams dashboard then takes the run's scalars as its metrics, the best included.
  assert "_hparams_/experiment" not in content
  # Each run's end adds the best so far (a point of the first run's end survives its resume: it is at step 3).
  val_losses = {s.step: s.value for s in accumulator.Scalars("val_loss")}
  best = [(s.step, s.value) for s in accumulator.Scalars("best_val_loss")]
  assert best == [(3, pytest.approx(val_losses[3])), (6, pytest.approx(min(val_losses.values())))]
  assert best[-1][1] == pytest.approx(result["best_val_loss"])
  assert [s.step for s in accumulator.Scalars("train_loss")] == list(range(1, 7))


def test_a_writer_closed_without_finish_records_no_session_end(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path, enabled=True, run_config={"train": {"steps": 4}})
  writer.write(1, {"train_loss": 2.0})
  writer.close()  # What the loop does when a signal stops the run: no `finish`, the run resumes later.
  events = _events(tmp_path)
  assert "_hparams_/session_start_info" in events and "_hparams_/session_end_info" not in events
  # A writer without a run config (and its resume) leaves the run info alone.
  metrics_lib.MetricWriter(tmp_path, enabled=True, resume_step=1).close()
  assert len(_events(tmp_path)["config/text_summary"]) == 1


def test_the_writer_does_not_import_pytorch_and_leaves_it_importable(tmp_path):
  """tensorboardX's writer imports torch only to accept torch tensors; the writer keeps it out (1.4 s of a run's
  start), and scalars still land in the event file, and torch still imports afterwards."""
  pytest.importorskip("torch")
  script = f"""
import sys
from gptjax import metrics
writer = metrics.MetricWriter({str(tmp_path)!r}, enabled=True, tensorboard=True)
writer.write(1, {{"loss": 2.5}})
writer.close()
assert "torch" not in sys.modules, "the writer imported torch"
import torch
assert torch.ones(2).sum().item() == 2.0
"""
  done = subprocess.run([sys.executable, "-c", script], cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = [event_pb2.Event.FromString(record) for record in metrics_lib.read_tfrecords(path)]
  values = [(event.step, value.tag, value.simple_value) for event in events for value in event.summary.value]
  assert (1, "loss", 2.5) in values
