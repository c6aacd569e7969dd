"""FLOPs per token (llm.c's count), the peak FLOP/s table and MFU."""

import dataclasses

import jax
import pytest

from gptjax import metrics, model as M


class _Device:
  """A stand-in for `jax.Device`: only the two fields the lookup reads."""

  def __init__(self, device_kind, platform="gpu"):
    self.device_kind, self.platform = device_kind, platform


def test_gpt2_small_flops_per_token_is_llm_c_figure():
  # llm.c: 6 N + 6 L C T with N = 124,439,808 (GPT-2 124M, vocab 50257), L = 12, C = 768, T = 1024.
  config = M.gpt2_config("small")
  assert metrics.num_params(config) == 124_439_808
  assert metrics.flops_per_token(config, 1024) == 6 * 124_439_808 + 6 * 12 * 768 * 1024
  # llm.c's 468k tokens/s on one H100 is the 38% MFU it reports.
  assert metrics.mfu(468e3, metrics.flops_per_token(config, 1024), 989e12) == pytest.approx(0.380, abs=1e-3)


def test_flops_per_token_counts_by_hand_on_a_tiny_model():
  config = M.ModelConfig(vocab_size=10, block_size=8, num_layers=2, num_heads=2, emb_dim=4, mlp_dim=16)
  per_layer = 2 * 4 + (4 * 12 + 12) + (4 * 4 + 4) + 2 * 4 + (4 * 16 + 16) + (16 * 4 + 4)  # ln, c_attn, c_proj, ln, mlp
  n = 10 * 4 + 8 * 4 + 2 * per_layer + 2 * 4  # wte, wpe, blocks, ln_f
  assert metrics.num_params(config) == n
  # Attention grows with the sequence (T); the weights' part does not.
  assert metrics.flops_per_token(config, 8) == 6 * n + 6 * 2 * 4 * 8
  assert metrics.flops_per_token(config, 4) == 6 * n + 6 * 2 * 4 * 4
  untied = dataclasses.replace(config, tie_embeddings=False)
  assert metrics.flops_per_token(untied, 8) - metrics.flops_per_token(config, 8) == 6 * 4 * 10


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10G", 125e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
])
def test_peak_flops_of_known_devices(kind, peak):
  assert metrics.peak_flops_per_device(_Device(kind)) == peak


def test_no_peak_for_cpus_and_unknown_devices():
  assert metrics.peak_flops_per_device(jax.devices("cpu")[0]) is None
  assert metrics.peak_flops_per_device(_Device("Some Future Chip")) is None
  assert metrics.mfu(1e6, 1e9, None) is None
  assert metrics.mfu(1e6, 1e9, 1e15, num_devices=2) == pytest.approx(0.5)
