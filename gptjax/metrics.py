"""What a run reports: FLOPs per token and MFU, and the writers (console line, metrics.jsonl, TensorBoard).

Only process 0 writes; the others make silent writers, so the trainer calls them everywhere alike. The workdir
may be local or in a cloud store (`gptjax.paths`): there `metrics.jsonl` and the event files are rewritten whole
at each log line (object stores have no append), the events written first into a local folder.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import threading
import uuid
from typing import Any, Optional

import jax
from absl import logging

from gptjax import model as model_lib
from gptjax import paths

# Dense (not sparse) bfloat16 peak FLOP/s of one device, from the vendors' data sheets, for MFU. Matched in order
# against the lower-cased `device_kind` (e.g. 'NVIDIA H100 80GB HBM3', 'TPU v5 lite'), so a name that contains
# another comes first ('gh200' before 'h200', 'h100 pcie' before 'h100', 'tpu v5 lite' before 'tpu v5').
PEAK_FLOPS = (
    ("gh200", 989e12), ("h200", 989e12), ("h100 pcie", 756e12), ("h100 nvl", 835e12), ("h100", 989e12),
    ("h800", 989e12), ("b200", 2250e12), ("a100", 312e12), ("a800", 312e12), ("l40s", 362e12), ("l4", 121e12),
    ("a10", 125e12),
    ("tpu v2", 45e12), ("tpu v3", 123e12), ("tpu v4", 275e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12),
    ("tpu v5p", 459e12), ("tpu v5", 459e12), ("tpu v6 lite", 918e12), ("tpu v6e", 918e12),
)


def flops_per_token(config: model_lib.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token, counted as llm.c counts them: 6 N + 6 L D T.

  N is the number of parameters (all of them, embeddings included, as in llm.c's `6 * num_parameters`), L the
  layers, D the width and T the tokens per training sequence. 6 N: each weight does one multiply-add (2 FLOPs) per
  token in the forward pass and two in the backward (gradients of the input and of the weight). 6 L D T:
  attention's two matmuls (q k^T and the weighted sum of v) cost 2 x 2 D T per token and layer in the forward and
  twice that in the backward, 12 L D T in all (PaLM, appendix B); the causal mask makes half of each L x L square
  zeros that a flash kernel skips, so llm.c counts half of it. For GPT-2 small at T = 1024 that is 6 x 124.4M +
  6 x 12 x 768 x 1024 = 0.803 GFLOP per token, and llm.c's 468k tokens/s on an H100 is 38% of 989 TFLOP/s.

  Args:
    config: the model.
    seq_len: tokens per training sequence (T).

  Returns:
    FLOPs per trained token.
  """
  return 6.0 * num_params(config) + 6.0 * config.num_layers * config.emb_dim * seq_len


def num_params(config: model_lib.ModelConfig) -> int:
  """Parameters of the model (embeddings included), from shapes alone: nothing is initialised."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))
  return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(shapes)))


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
  """Dense bf16 peak FLOP/s of a known accelerator, or None (CPUs and unknown devices: MFU is not reported)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS if name in kind), None)


def _records_up_to(path: paths.PathLike, step: int) -> list[str]:
  """The lines of a metrics.jsonl with step <= `step`; a line torn by a kill mid-write is dropped."""
  kept = []
  for line in paths.path(path).read_text(encoding="utf-8").splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and record.get("step", step + 1) <= step:
      kept.append(line)
  return kept


# Summaries a run writes once, at its start: a resume drops the earlier copy and writes its own.
CONFIG_TAG = "config"  # tensorboardX's add_text stores it as `config/text_summary`.
HPARAMS_TAGS = ("_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info")
RUN_INFO_TAGS = (f"{CONFIG_TAG}/text_summary", *HPARAMS_TAGS)



_IMPORT_LOCK = threading.Lock()


def _tensorboardx():
  """tensorboardX, imported without importing PyTorch when PyTorch is not loaded yet.

  Its writer module tries `import torch` only to accept torch tensors as values; where torch is installed that
  import cost 1.4 of the ~10 s before a small run's first step (`python -X importtime`), and gptjax writes
  Python floats. A `None` entry in `sys.modules` makes that one import fail as if torch were absent; the entry is
  removed at once, so a later `import torch` works as usual.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  with _IMPORT_LOCK:
    sys.modules["torch"] = None
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
    finally:
      if sys.modules.get("torch", 0) is None:
        del sys.modules["torch"]
  return tensorboardX


def truncate_tensorboard(directory: paths.PathLike, step: int, drop_tags: tuple[str, ...] = ()) -> int:
  """Rewrites the TensorBoard event files in `directory` without the points past `step`; returns how many went.

  A resumed run logs the steps after its checkpoint again; without this, TensorBoard would draw both the killed
  run's points and the new ones (orbax keeps no events; tensorboardX's `purge_step` only hides them from readers
  that implement it). Summaries tagged with one of `drop_tags` go at every step: the run info that the resumed run
  writes again.
  """
  _tensorboardx()
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  dropped = 0
  for path in sorted(paths.path(directory).glob("events.out.tfevents.*")):
    kept, removed = [], 0
    for data in read_tfrecords(path):
      event = event_pb2.Event.FromString(data)
      if event.HasField("summary") and (event.step > step or
                                        any(v.tag in drop_tags for v in event.summary.value)):
        removed += 1
      else:
        kept.append(data)
    if not removed:
      continue
    _write_tfrecords(path, kept)
    dropped += removed
  return dropped


def _write_tfrecords(path: paths.PathLike, records: list[bytes]) -> None:
  """Replaces the TFRecord file `path` with `records`, atomically (see `paths.write_atomic`)."""
  _tensorboardx()
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top
  pieces = []
  for data in records:  # TFRecord framing: length, its CRC, the payload, its CRC.
    header = struct.pack("<Q", len(data))
    pieces += [header, struct.pack("<I", masked_crc32c(header)), data, struct.pack("<I", masked_crc32c(data))]
  paths.write_atomic(path, b"".join(pieces))


def read_tfrecords(path: paths.PathLike):
  """The payloads of a TFRecord file (an event file); stops quietly at a record torn by a kill."""
  with paths.path(path).open("rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def mfu(tokens_per_sec: float, flops_token: float, peak_flops: Optional[float], num_devices: int = 1
        ) -> Optional[float]:
  """Model FLOPs utilisation: the FLOPs the tokens needed per second over the devices' peak; None without a peak."""
  return tokens_per_sec * flops_token / (peak_flops * num_devices) if peak_flops else None


class MetricWriter:
  """One console line per log interval, `metrics.jsonl` and TensorBoard events; silent except on process 0.

  On resume (`resume_step` > 0) both drop the points past the restored step first: they belong to the run that
  was killed, and the resumed run logs those steps again. At step 0 a fresh `metrics.jsonl` replaces any old one.

  With `run_config` (the run's config.json as a dict), TensorBoard also gets the config once: as text (tag
  `config`, a JSON code block) and as hparams (every setting under its dotted name, in the HParams dashboard,
  whose metrics are the run's own scalars). Both are written at the step the run starts from, after dropping any
  earlier copy, so a resumed run shows exactly one: its own. `finish` adds the best evaluation as `best_<metric>`
  and marks the hparams session complete.
  """

  def __init__(self, workdir: paths.PathLike, *, enabled: bool, resume_step: int = 0, tensorboard: bool = True,
               run_config: Optional[dict] = None):
    self.enabled = enabled
    workdir = paths.path(workdir)
    self.path = workdir / "metrics.jsonl"
    self.tensorboard_dir = workdir / "tensorboard"
    self._tb = None
    self._lines: list[str] = []  # metrics.jsonl's lines, kept for a cloud workdir (rewritten whole: no append).
    self._staging = None  # A cloud workdir's events are written here first, then uploaded at each flush.
    if not enabled:
      return
    if self.path.exists():
      self._lines = _records_up_to(self.path, resume_step)
      paths.write_atomic(self.path, "".join(line + "\n" for line in self._lines))
    if self.tensorboard_dir.is_dir():
      truncate_tensorboard(self.tensorboard_dir, resume_step, RUN_INFO_TAGS if run_config is not None else ())
    if tensorboard:
      tensorboardX = _tensorboardx()
      local_dir = self.tensorboard_dir
      if paths.is_uri(self.tensorboard_dir):
        self._staging = tempfile.TemporaryDirectory(prefix="gptjax-tensorboard-")
        local_dir = self._staging.name
      # A unique suffix: two writers started in the same second on one host would otherwise share a file name.
      self._tb = tensorboardX.SummaryWriter(os.fspath(local_dir), filename_suffix=f".{uuid.uuid4().hex[:8]}")
      if run_config is not None:
        self._write_run_info(run_config, resume_step)

  def _write_run_info(self, run_config: dict, step: int) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    text = "```json\n" + json.dumps(run_config, indent=2) + "\n```"
    self._tb.add_text(CONFIG_TAG, text, step)
    _, session_start, _ = summary.hparams(hparam_values(run_config), {})
    # The session start alone: without an experiment summary the HParams dashboard takes every scalar of the run
    # as a metric, so nothing needs listing here (and a metric first logged later is not missed).
    self._tb.file_writer.add_summary(session_start, step)
    self._flush()

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
    line = json.dumps(record)
    if paths.is_local(self.path):
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    else:
      self._lines.append(line)
      paths.write_atomic(self.path, "".join(l + "\n" for l in self._lines))
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, step)
      self._flush()

  def finish(self, step: int, best: Optional[tuple[str, float]]) -> None:
    """A run that reached its end: `best` = (metric name, best value) becomes the scalar `best_<name>` at `step`,
    and the hparams session is marked complete."""
    if self._tb is None:
      return
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    if best is not None and best[1] is not None:
      self._tb.add_scalar(f"best_{best[0]}", float(best[1]), step)
    _, _, session_end = summary.hparams({}, {})
    self._tb.file_writer.add_summary(session_end, step)
    self._flush()

  def _flush(self) -> None:
    self._tb.flush()
    if self._staging is not None:
      paths.upload_dir(self._staging.name, self.tensorboard_dir)

  def info(self, message: str, *args) -> None:
    if self.enabled:
      logging.info(message, *args)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      if self._staging is not None:
        paths.upload_dir(self._staging.name, self.tensorboard_dir)
        self._staging.cleanup()
      self._tb = None


def hparam_values(config: dict, prefix: str = "") -> dict[str, Any]:
  """A nested config as flat hparams: dotted names; numbers, strings and bools as they are, lists as JSON text,
  None left out (the HParams dashboard has no null)."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(hparam_values(value, name + "."))
    elif isinstance(value, (list, tuple)):
      flat[name] = json.dumps(value)
    elif value is not None:
      flat[name] = value
  return flat


# Log lines name the trainer line that called `MetricWriter.info`, not the wrapper.
logging.ABSLLogger.register_frame_to_skip(__file__, "info")


def format_duration(seconds: float) -> str:
  """`h:mm:ss` (or `m:ss` under an hour)."""
  seconds = max(int(round(seconds)), 0)
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_line(step: int, total: int, m: dict[str, Any], *, elapsed_s: Optional[float] = None,
                eta_s: Optional[float] = None) -> str:
  """The console line of one log interval, e.g.
  `step 100/300 | loss 5.2693 | lr 2.752e-03 | 1,564 tok/s | mfu n/a | 9.8 ms/step | elapsed 0:42 | eta 1:24`.

  Keys beyond the pre-training ones (a fine-tuning run's task_loss, val_accuracy, ...) follow in order.
  """
  parts = [f"step {step}/{total}", f"loss {m['train_loss']:.4f}", f"lr {m['lr']:.3e}"]
  if "tokens_per_sec" in m:
    parts.append(f"{m['tokens_per_sec']:,.0f} tok/s")
    parts.append(f"mfu {100 * m['mfu']:.1f}%" if m.get("mfu") is not None else "mfu n/a")
  if "step_time_s" in m:
    parts.append(f"{1000 * m['step_time_s']:.1f} ms/step")
  if "val_loss" in m:
    parts += [f"val_loss {m['val_loss']:.4f}", f"val_ppl {m['val_ppl']:.2f}"]
  shown = {"train_loss", "lr", "tokens_per_sec", "mfu", "step_time_s", "val_loss", "val_ppl", "grad_norm"}
  parts += [f"{k} {v:.4f}" for k, v in m.items() if k not in shown and isinstance(v, float)]
  if elapsed_s is not None:
    parts.append(f"elapsed {format_duration(elapsed_s)}")
  if eta_s is not None:
    parts.append(f"eta {format_duration(eta_s)}")
  return " | ".join(parts)
