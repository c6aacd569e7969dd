"""What a run reports: FLOPs per token and MFU, and the writers (console line, metrics.jsonl, TensorBoard).

Only process 0 writes; the others make silent writers, so the trainer calls them everywhere alike.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import jax
from absl import logging

from gptjax import model as model_lib

# Dense bf16 peak FLOP/s per device, for MFU. Matched in order against `device_kind` (lower case).
PEAK_FLOPS = (
    ("h100 pcie", 756e12), ("h100", 989e12), ("h200", 989e12), ("gh200", 989e12), ("a100", 312e12),
    ("tpu v4", 275e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12), ("tpu v6e", 918e12),
)


def flops_per_token(config: model_lib.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: forward + backward = 3 x forward (PaLM, appendix B; nanoGPT's estimate_mfu).

  Matmuls: 2 FLOPs per multiply-add, so 6 x the weights that multiply activations: per layer the qkv (D x 3D),
  attention output (D x D) and MLP (2 x D x F) matrices, plus the output projection (D x V). The position table
  and the input embedding are lookups, not matmuls. Attention: QK^T and the weighted sum of V cost 2 x 2 x L x D
  per token and layer forward, so 12 x layers x D x L with the backward (counted over the full L x L square, as
  PaLM does, although the causal mask makes half of it zeros).
  """
  D, F, V = config.emb_dim, config.mlp_dim, config.vocab_size
  matmul_weights = config.num_layers * (3 * D * D + D * D + 2 * D * F) + D * V
  return 6.0 * matmul_weights + 12.0 * config.num_layers * D * seq_len


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
  """Dense bf16 peak FLOP/s of a known accelerator, or None (CPUs and unknown devices: MFU is not reported)."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS if name in kind), None)


class MetricWriter:
  """One console line per log interval, `metrics.jsonl` and TensorBoard events; silent except on process 0."""

  def __init__(self, workdir: pathlib.Path, *, enabled: bool, resume_step: int = 0, tensorboard: bool = True):
    self.enabled = enabled
    self.path = workdir / "metrics.jsonl"
    self._tb = None
    if not enabled:
      return
    if self.path.exists():
      # Steps after the checkpoint we resume from were lost with the killed run and will be logged again.
      lines = [line for line in self.path.read_text().splitlines()
               if line.strip() and json.loads(line)["step"] <= resume_step]
      self.path.write_text("".join(line + "\n" for line in lines))
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def info(self, message: str, *args) -> None:
    if self.enabled:
      logging.info(message, *args)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


# Log lines name the trainer line that called `MetricWriter.info`, not the wrapper.
logging.ABSLLogger.register_frame_to_skip(__file__, "info")


def format_line(step: int, total: int, m: dict[str, Any]) -> str:
  """The console line of one log interval, e.g. `step 100/300 | loss 5.2693 | lr 2.752e-03 | 1,564 tok/s | ...`."""
  parts = [f"step {step}/{total}", f"loss {m['train_loss']:.4f}", f"lr {m['lr']:.3e}",
           f"{m['tokens_per_sec']:,.0f} tok/s", f"mfu {100 * m['mfu']:.1f}%" if m.get("mfu") is not None else "mfu n/a",
           f"{1000 * m['step_time_s']:.1f} ms/step"]
  if "val_loss" in m:
    parts += [f"val_loss {m['val_loss']:.4f}", f"val_ppl {m['val_ppl']:.2f}"]
  return " | ".join(parts)
