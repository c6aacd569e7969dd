"""What a run reports: FLOPs per token and MFU, and the writers (console line, metrics.jsonl, TensorBoard).

Only process 0 writes; the others make silent writers, so the trainer calls them everywhere alike.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any, Optional

import jax
from absl import logging

from gptjax import model as model_lib

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


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: a kill leaves the old file or the new one."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _records_up_to(path: pathlib.Path, step: int) -> list[str]:
  """The lines of a metrics.jsonl with step <= `step`; a line torn by a kill mid-write is dropped."""
  kept = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and record.get("step", step + 1) <= step:
      kept.append(line)
  return kept


def truncate_tensorboard(directory: pathlib.Path, step: int) -> int:
  """Rewrites the TensorBoard event files in `directory` without the points past `step`; returns how many went.

  A resumed run logs the steps after its checkpoint again; without this, TensorBoard would draw both the killed
  run's points and the new ones (orbax keeps no events; tensorboardX's `purge_step` only hides them from readers
  that implement it).
  """
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  dropped = 0
  for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
    kept, removed = [], 0
    for data in read_tfrecords(path):
      event = event_pb2.Event.FromString(data)
      if event.step > step and event.HasField("summary"):
        removed += 1
      else:
        kept.append(data)
    if not removed:
      continue
    tmp = path.with_name(path.name + ".tmp")
    writer = record_writer.RecordWriter(str(tmp))
    for data in kept:
      writer.write(data)
    writer.close()
    os.replace(tmp, path)
    dropped += removed
  return dropped


def read_tfrecords(path: pathlib.Path):
  """The payloads of a TFRecord file (an event file); stops quietly at a record torn by a kill."""
  with open(path, "rb") as f:
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
  """

  def __init__(self, workdir: pathlib.Path, *, enabled: bool, resume_step: int = 0, tensorboard: bool = True):
    self.enabled = enabled
    self.path = workdir / "metrics.jsonl"
    self.tensorboard_dir = workdir / "tensorboard"
    self._tb = None
    if not enabled:
      return
    if self.path.exists():
      kept = _records_up_to(self.path, resume_step)
      atomic_write_text(self.path, "".join(line + "\n" for line in kept))
    if self.tensorboard_dir.is_dir():
      truncate_tensorboard(self.tensorboard_dir, resume_step)
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(str(self.tensorboard_dir))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def info(self, message: str, *args) -> None:
    if self.enabled:
      logging.info(message, *args)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


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
