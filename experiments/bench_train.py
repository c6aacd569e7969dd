r"""Training throughput and peak memory: gptjax next to Hugging Face PyTorch `GPT2LMHeadModel`, same everything.

Both sides train the same GPT-2 shape on the same batches (random token ids from one numpy seed) with AdamW
(b1 0.9, b2 0.95, weight decay 0.1 on matrices only, global-norm clipping at 1.0), the loss being the mean
next-token cross-entropy. Each framework runs in its own subprocess, so the peak memory of one does not count
against the other: device memory on a GPU, the process's peak resident memory (RSS) on a CPU.

  python experiments/bench_train.py --shape=small --batch_size=8 --seq_len=128
  python experiments/bench_train.py --shape=gpt2_small --batch_size=2 --seq_len=128 --steps=3

On a GPU both sides compute in bfloat16 with float32 parameters (PyTorch through autocast, and --torch_compile is
worth trying); on a CPU both compute in float32 and MFU is not reported (no meaningful peak to divide by).
Results (tokens/s, ms/step, peak memory, MFU) go to stdout as a table and the jax/torch throughput ratio.

Measured 2026-11-23 on the project's 2-core CPU VM, shared with other jobs (load average ~5, so absolute numbers
are low and noisy; the ratio is the point). jax 0.10.2, torch 2.13.0+cpu, transformers 5.23, float32:

  --shape=small --batch_size=8 --seq_len=128 --steps=10            (5,289,472 parameters)
    jax    422 tokens/s   2425 ms/step   0.73 GiB peak RSS
    torch  216 tokens/s   4747 ms/step   1.03 GiB peak RSS       jax / torch = 1.96x
  --shape=gpt2_small --batch_size=2 --seq_len=128 --steps=3 --warmup=1   (123,751,680 parameters: block 128)
    jax     16 tokens/s  15677 ms/step   2.85 GiB peak RSS
    torch   14 tokens/s  18873 ms/step   3.39 GiB peak RSS       jax / torch = 1.20x

No GPU was lent to this task, so there is no GPU row or MFU figure yet.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

SHAPES = {
    # name: (num_layers, num_heads, emb_dim, vocab_size)
    "small": (4, 4, 256, 8192),
    "gpt2_small": (12, 12, 768, 50257),
    "gpt2_medium": (24, 16, 1024, 50257),
}

_SHAPE = flags.DEFINE_enum("shape", "small", list(SHAPES), "Model shape.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence (also the model's block_size).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation, allocator warm-up).")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "torch"], "Which sides to run.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "Wrap the PyTorch model in torch.compile.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one side and print its result as JSON.")


def _batches(vocab_size, count):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  return [rng.integers(0, vocab_size, (_BATCH.value, _SEQ_LEN.value + 1), dtype=np.int32) for _ in range(count)]


def _model_config(on_gpu: bool):
  from gptjax import model as model_lib  # pylint: disable=g-import-not-at-top
  layers, heads, width, vocab = SHAPES[_SHAPE.value]
  return model_lib.ModelConfig(vocab_size=vocab, block_size=_SEQ_LEN.value, num_layers=layers, num_heads=heads,
                               emb_dim=width, mlp_dim=4 * width, dropout_rate=0.0, attention_dropout_rate=0.0,
                               dtype="bfloat16" if on_gpu else "float32")


def _peak_host_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB.


def _run_jax() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from gptjax import metrics as metrics_lib, model as model_lib, optim, sharding, trainer  # pylint: disable=g-import-not-at-top

  on_gpu = jax.devices()[0].platform == "gpu"
  config = _model_config(on_gpu)
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(lr=3e-4, warmup_steps=1, total_steps=1000)
  state, shardings = trainer.init_train_state(config, tx, mesh, jax.random.key(0))
  step = jax.jit(trainer.make_train_step(model_lib.GPT(config), tx, mesh),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
  batches = [sharding.global_batch(b, mesh) for b in _batches(config.vocab_size, _WARMUP.value + _STEPS.value)]
  with jax.set_mesh(mesh), sharding.axis_rules():
    for b in batches[:_WARMUP.value]:
      state, metrics = step(state, b, rng)
    float(metrics["loss"])
    start = time.perf_counter()
    for b in batches[_WARMUP.value:]:
      state, metrics = step(state, b, rng)
    loss = float(metrics["loss"])  # Waits for the last step.
    elapsed = time.perf_counter() - start
  stats = jax.devices()[0].memory_stats() if on_gpu else None
  return {"framework": f"jax {jax.__version__}", "device": jax.devices()[0].device_kind, "elapsed": elapsed,
          "loss": loss, "params": model_lib.count_params(state.params),
          "peak_bytes": stats["peak_bytes_in_use"] if stats else _peak_host_bytes(),
          "memory_kind": "device" if stats else "host RSS", "num_devices": jax.device_count(),
          "flops_per_token": metrics_lib.flops_per_token(config, _SEQ_LEN.value),
          "peak_flops": metrics_lib.peak_flops_per_device()}


def _run_torch() -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from gptjax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top  (FLOP count and peak table only)

  on_gpu = torch.cuda.is_available()
  device = torch.device("cuda" if on_gpu else "cpu")
  config = _model_config(on_gpu)
  torch.manual_seed(0)
  hf_config = transformers.GPT2Config(
      vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.emb_dim,
      n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.mlp_dim, resid_pdrop=0.0, embd_pdrop=0.0,
      attn_pdrop=0.0, activation_function="gelu_new")
  model = transformers.GPT2LMHeadModel(hf_config).to(device).train()
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=on_gpu)
  forward = torch.compile(model) if _TORCH_COMPILE.value else model

  def train_step(tokens):
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
      logits = forward(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  batches = [torch.from_numpy(b).long().to(device) for b in _batches(config.vocab_size, _WARMUP.value + _STEPS.value)]
  for b in batches[:_WARMUP.value]:
    loss = train_step(b)
  loss.item()
  if on_gpu:
    torch.cuda.synchronize()
  start = time.perf_counter()
  for b in batches[_WARMUP.value:]:
    loss = train_step(b)
  loss = loss.item()  # Waits for the last step.
  elapsed = time.perf_counter() - start
  return {"framework": f"torch {torch.__version__}" + (" (compiled)" if _TORCH_COMPILE.value else ""),
          "device": torch.cuda.get_device_name() if on_gpu else "cpu", "elapsed": elapsed, "loss": loss,
          "params": sum(p.numel() for p in model.parameters()),
          "peak_bytes": torch.cuda.max_memory_allocated() if on_gpu else _peak_host_bytes(),
          "memory_kind": "device" if on_gpu else "host RSS", "num_devices": 1,
          "flops_per_token": metrics_lib.flops_per_token(config, _SEQ_LEN.value),
          "peak_flops": metrics_lib.peak_flops_per_device() if on_gpu else None}


def main(argv):
  del argv
  if _WORKER.value:
    result = {"jax": _run_jax, "torch": _run_torch}[_WORKER.value]()
    print("RESULT " + json.dumps(result), flush=True)
    return
  tokens = _BATCH.value * _SEQ_LEN.value * _STEPS.value
  rows = []
  for side in _FRAMEWORKS.value:
    args = [sys.executable, __file__, f"--worker={side}"] + [a for a in sys.argv[1:] if "--frameworks" not in a]
    out = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ), check=False)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
      raise RuntimeError(f"The {side} run failed:\n{out.stderr[-4000:]}")
    r = json.loads(line[len("RESULT "):])
    r["tokens_per_sec"] = tokens / r["elapsed"]
    r["mfu"] = (r["tokens_per_sec"] * r["flops_per_token"] / (r["peak_flops"] * r["num_devices"])
                if r["peak_flops"] else None)
    rows.append(r)
  layers, heads, width, vocab = SHAPES[_SHAPE.value]
  print(f"\nshape {_SHAPE.value}: {layers} layers, {heads} heads, width {width}, vocab {vocab}; batch "
        f"{_BATCH.value} x {_SEQ_LEN.value} tokens; {_STEPS.value} timed steps after {_WARMUP.value}\n")
  print(f"| {'framework':<24} | {'device':<22} | {'params':>12} | {'tokens/s':>10} | {'ms/step':>9} | "
        f"{'peak memory':>20} | {'MFU':>6} | {'last loss':>9} |")
  print("|" + "|".join("-" * n for n in (26, 24, 14, 12, 11, 22, 8, 11)) + "|")
  for r in rows:
    memory = f"{r['peak_bytes'] / 2**30:.2f} GiB {r['memory_kind']}"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"| {r['framework']:<24} | {r['device']:<22} | {r['params']:>12,} | {r['tokens_per_sec']:>10,.0f} | "
          f"{1000 * r['elapsed'] / _STEPS.value:>9.1f} | {memory:>20} | {mfu:>6} | {r['loss']:>9.4f} |")
  if len(rows) == 2:
    print(f"\nthroughput ratio {rows[0]['framework']} / {rows[1]['framework']}: "
          f"{rows[0]['tokens_per_sec'] / rows[1]['tokens_per_sec']:.2f}x")


if __name__ == "__main__":
  app.run(main)
