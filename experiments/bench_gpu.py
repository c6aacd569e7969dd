r"""One accelerator, one table: GPT-2 small training tokens/s and MFU, and batch-1 decoding against its bound.

  python experiments/bench_gpu.py            # on one H100 / H200 / A100 / TPU: at most ~8 minutes
  python experiments/bench_gpu.py --small    # any machine (automatic when there is no GPU or TPU): seconds

Rows:
- Training, GPT-2 small (124M, context 1024), bfloat16 compute with float32 parameters and AdamW, through the
  trainer's own jitted `train_step` on batches already on the device; attention through
  `jax.nn.dot_product_attention(implementation='cudnn')` (cuDNN's flash attention) on GPUs, XLA's elsewhere; remat
  off and on (on: a larger batch fits). tokens/s is the median over `--steps` timed steps after compilation; MFU
  counts FLOPs as llm.c does (`gptjax.metrics.flops_per_token`: 6N + 6LDT) over the device's dense bf16 peak
  (`gptjax.metrics.PEAK_FLOPS`). Anchors: llm.c trains GPT-2 124M at 468k tokens/s on one H100 (38% MFU), nanoGPT
  at about 380k; the goal is >= 600k (49%).
- Decoding at batch 1: greedy, bfloat16 weights, one compiled loop of `--decode_tokens` steps on the model's key/value
  cache after a one-token prompt. Its bound: each step must read every weight once (2 bytes each) plus the cache
  written so far, so tokens/s <= HBM bandwidth / (2N + cache bytes at the mean context); the goal is >= 45% of it.
- The server's saturated throughput: a TODO row until `gptjax.serve` exists on main.

No GPU was lent to the session that wrote this, so there is no measured accelerator table yet: run the first
command on one and put its table here and in the README. On the 2-core CPU VM, `--small` (a 2-layer, 64-wide model,
context 64) prints the same rows with MFU and the bound as n/a (tests/bench_gpu_test.py runs it that way).
"""

import dataclasses
import os
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from gptjax import metrics as metrics_lib
from gptjax import model as model_lib
from gptjax import optim
from gptjax import sharding
from gptjax import trainer

_SMALL = flags.DEFINE_bool("small", None, "A tiny model that runs anywhere; default: on when no GPU/TPU is present.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Training sequences per step without remat (twice that with); 0 = "
                              "16 (GPT-2 small) or 4 (--small).")
_STEPS = flags.DEFINE_integer("steps", 0, "Timed training steps per row; 0 = 20 (GPT-2 small) or 3 (--small).")
_DECODE_TOKENS = flags.DEFINE_integer("decode_tokens", 0, "Decoded tokens; 0 = 512 (GPT-2 small) or 16 (--small).")
_ATTENTION = flags.DEFINE_string("attention", None, "attention_impl for training: default 'cudnn' on GPUs, else "
                                 "the model's CPU/TPU default.")

# Peak HBM bandwidth in bytes/s per device, for the decoding bound; matched like gptjax.metrics.PEAK_FLOPS.
PEAK_BANDWIDTH = (
    ("gh200", 4.0e12), ("h200", 4.8e12), ("h100 pcie", 2.0e12), ("h100 nvl", 3.9e12), ("h100", 3.35e12),
    ("b200", 8.0e12), ("a100-sxm4-40gb", 1.555e12), ("a100-pcie-40gb", 1.555e12), ("a100", 2.0e12),
    ("l40s", 0.864e12), ("l4", 0.3e12), ("a10", 0.6e12),
    ("tpu v4", 1.2e12), ("tpu v5 lite", 0.819e12), ("tpu v5e", 0.819e12), ("tpu v5p", 2.765e12),
    ("tpu v5", 2.765e12), ("tpu v6 lite", 1.64e12), ("tpu v6e", 1.64e12),
)


def peak_bandwidth(device) -> Optional[float]:
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  return next((bw for name, bw in PEAK_BANDWIDTH if name in kind), None)


def _config(small: bool, **overrides) -> model_lib.ModelConfig:
  if small:
    base = model_lib.ModelConfig(vocab_size=256, block_size=64, num_layers=2, num_heads=2, emb_dim=64, mlp_dim=256)
  else:
    base = model_lib.gpt2_config("small")
  return dataclasses.replace(base, dropout_rate=0.0, attention_dropout_rate=0.0, **overrides)


def train_row(config: model_lib.ModelConfig, batch_size: int, steps: int) -> dict:
  """Median tokens/s and MFU of the trainer's compiled step on one shape."""
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(lr=6e-4, warmup_steps=10, total_steps=1000)
  state, shardings = trainer.init_train_state(config, tx, mesh, jax.random.key(0))
  step = jax.jit(trainer.make_train_step(model_lib.GPT(config), tx, mesh),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch_size, config.block_size + 1), np.int32)
  batch = sharding.global_batch(tokens, mesh)
  with jax.set_mesh(mesh), sharding.axis_rules():
    started = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - started
    for _ in range(2):  # Allocator and autotuning warm-up.
      state, metrics = compiled(state, batch, rng)
    float(metrics["loss"])
    times = []
    for _ in range(steps):
      started = time.perf_counter()
      state, metrics = compiled(state, batch, rng)
      float(metrics["loss"])  # One step at a time, so each is timed alone.
      times.append(time.perf_counter() - started)
  tokens_per_sec = batch_size * config.block_size / float(np.median(times))
  flops = metrics_lib.flops_per_token(config, config.block_size)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  return {"tokens_per_sec": tokens_per_sec, "compile_s": compile_s, "loss": float(metrics["loss"]),
          "mfu": metrics_lib.mfu(tokens_per_sec, flops, metrics_lib.peak_flops_per_device(device),
                                 jax.device_count()),
          "peak_gib": stats["peak_bytes_in_use"] / 2**30 if stats else None}


def decode_row(config: model_lib.ModelConfig, num_tokens: int) -> dict:
  """Greedy batch-1 decoding tokens/s through the model's cache, and the memory-bandwidth bound."""
  config = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16", attention_impl=None)
  length = min(config.block_size, num_tokens + 1)
  params = jax.jit(lambda r: nn.meta.unbox(model_lib.init_params(config, r)))(jax.random.key(0))
  decoder = model_lib.GPT(dataclasses.replace(config, decode=True))

  @jax.jit
  def generate(params, cache, first_B1):
    def body(_, carry):
      cache, token_B1 = carry
      logits_B1V, variables = decoder.apply({"params": params, "cache": cache}, token_B1, mutable=["cache"])
      return variables["cache"], jnp.argmax(logits_B1V, axis=-1).astype(jnp.int32)
    return jax.lax.fori_loop(0, length - 1, body, (cache, first_B1))[1]

  first = jnp.zeros((1, 1), jnp.int32)
  cache = model_lib.init_cache(config, 1, length)
  compiled = generate.lower(params, cache, first).compile()
  jax.block_until_ready(compiled(params, cache, first))
  times = []
  for _ in range(3):
    started = time.perf_counter()
    jax.block_until_ready(compiled(params, cache, first))
    times.append(time.perf_counter() - started)
  tokens_per_sec = (length - 1) / min(times)
  weight_bytes = 2 * model_lib.count_params(params)
  # Keys and values of every layer up to the mean context, in bfloat16.
  cache_bytes = 2 * 2 * config.num_layers * config.emb_dim * (length / 2)
  bandwidth = peak_bandwidth(jax.devices()[0])
  bound = bandwidth / (weight_bytes + cache_bytes) if bandwidth else None
  return {"tokens_per_sec": tokens_per_sec, "bound": bound, "fraction": tokens_per_sec / bound if bound else None,
          "tokens": length - 1}


def _server_row() -> Optional[str]:
  try:
    import gptjax.serve  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None
  return "TODO: gptjax.serve exists now; drive it at saturation here (experiments/bench_serve.py)"


def main(argv):
  del argv
  device = jax.devices()[0]
  small = _SMALL.value if _SMALL.value is not None else device.platform == "cpu"
  batch = _BATCH.value or (4 if small else 16)
  batch = -(-batch // jax.device_count()) * jax.device_count()  # Every device gets whole rows.
  steps = _STEPS.value or (3 if small else 20)
  decode_tokens = _DECODE_TOKENS.value or (16 if small else 512)
  attention = _ATTENTION.value or ("cudnn" if device.platform == "gpu" else None)
  dtype = "bfloat16" if device.platform != "cpu" else "float32"
  shape = "tiny 2x64, context 64" if small else "GPT-2 small 124M, context 1024"
  print(f"\n{device.device_kind} ({jax.device_count()} device(s), jax {jax.__version__}); {shape}; training compute "
        f"{dtype}, attention {attention or 'default'}\n")
  print(f"| {'row':<44} | {'tokens/s':>12} | {'MFU / of bound':>15} | {'notes':<52} |")
  print("|" + "|".join("-" * n for n in (46, 14, 17, 54)) + "|")
  for remat, rows in ((False, batch), (True, batch), (True, 2 * batch)):
    config = _config(small, dtype=dtype, remat=remat, attention_impl=attention)
    name = f"train, remat {'on ' if remat else 'off'}, batch {rows} x {config.block_size}"
    try:
      r = train_row(config, rows, steps)
    except Exception as e:  # pylint: disable=broad-except  (an OOM or an unsupported kernel ends one row only)
      print(f"| {name:<44} | {'failed':>12} | {'':>15} | {type(e).__name__}: {str(e).splitlines()[0][:40]:<40} |")
      continue
    mfu = f"{100 * r['mfu']:.1f}% MFU" if r["mfu"] is not None else "n/a"
    memory = f", peak {r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else ""
    notes = f"compile {r['compile_s']:.0f} s{memory}, loss {r['loss']:.2f}"
    print(f"| {name:<44} | {r['tokens_per_sec']:>12,.0f} | {mfu:>15} | {notes:<52} |")
  d = decode_row(_config(small), decode_tokens)
  of_bound = f"{100 * d['fraction']:.0f}% of bound" if d["fraction"] is not None else "n/a"
  bound = f"bound {d['bound']:,.0f} tokens/s (bf16 weights + cache)" if d["bound"] else "no known HBM bandwidth"
  name = f"decode, batch 1, greedy, {d['tokens']} tokens"
  print(f"| {name:<44} | {d['tokens_per_sec']:>12,.0f} | {of_bound:>15} | {bound:<52} |")
  server = _server_row() or "TODO: gptjax.serve is not on main yet"
  print(f"| {'server, saturated':<44} | {'TODO':>12} | {'':>15} | {server[:52]:<52} |")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  app.run(main)
