r"""Training throughput and peak memory: gptjax next to Hugging Face PyTorch `GPT2LMHeadModel`, same everything.

Both sides train the same GPT-2 shape on the same batches (random token ids from one numpy seed) with AdamW
(b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1 on matrices only, global-norm clipping at 1.0) and the mean next-token
cross-entropy; dropout off. gptjax runs the trainer's own jitted `train_step` (`gptjax.trainer.make_train_step`)
on batches already on the device, so the figure is the compiled step alone, not the training loop around it.

Each framework runs in its own long-lived worker process (peak memory of one does not count against the other:
device memory on a GPU, the process's peak resident memory on a CPU), and the two take turns: round r times
`--steps` steps of jax, then of torch, then the next shape, `--rounds` times over. The machine this was measured on
is a 2-core VM shared with other jobs, so each round's ratio is taken between neighbours in time, and the table
quotes medians over rounds with the spread (min-max of the per-round ratios) as the noise.

  python experiments/bench_train.py                                    # nanoGPT's CPU shape and the quickstart's
  python experiments/bench_train.py --shapes=gpt2_small --batch_size=8 --seq_len=1024   # on a GPU

Shapes: `nanogpt_cpu` is nanoGPT's README CPU command (4 layers, 4 heads, width 128, block 64, batch 12, the 65
characters of Tiny Shakespeare); `quickstart` is configs/quickstart.py (4 x 4 x 128, vocabulary 2048, block 128,
batch 16). On a GPU both sides compute in bfloat16 with float32 parameters (PyTorch through autocast, and
--torch_compile is worth trying); on a CPU both compute in float32 and MFU is not reported.

Measured 2026-12-02 on the project's 2-core CPU VM (AMD EPYC, AVX-512) nearly idle (load average 1.2-1.8 during
the run), jax 0.10.2, torch 2.13.0+cpu, transformers 5.24, `python experiments/bench_train.py --rounds=7`:

  | shape        | framework          |     params |                 tokens/s |  ms/step |         peak memory |    MFU |           vs torch |
  |--------------|--------------------|------------|--------------------------|----------|---------------------|--------|--------------------|
  | nanogpt_cpu  | jax 0.10.2 x2      |    809,856 |   19,125 [17,700-20,094] |     40.2 |   0.56 GiB host RSS |    n/a |  1.28x [1.14-1.56] |
  | nanogpt_cpu  | jax 0.10.2 x1      |    809,856 |   13,474 [12,043-15,948] |     57.0 |   0.55 GiB host RSS |    n/a |  0.94x [0.89-1.04] |
  | nanogpt_cpu  | torch 2.13.0+cpu   |    809,856 |   14,597 [12,880-17,067] |     52.6 |   0.65 GiB host RSS |    n/a |                    |
  | quickstart   | jax 0.10.2 x2      |  1,071,872 |    11,302 [9,639-12,671] |    181.2 |   0.67 GiB host RSS |    n/a |  0.91x [0.84-0.96] |
  | quickstart   | jax 0.10.2 x1      |  1,071,872 |     9,880 [9,082-11,700] |    207.3 |   0.68 GiB host RSS |    n/a |  0.84x [0.74-0.89] |
  | quickstart   | torch 2.13.0+cpu   |  1,071,872 |   12,113 [10,589-13,966] |    169.1 |   0.91 GiB host RSS |    n/a |                    |

`jax ... x2` is the trainer's CPU default: the two cores as two XLA devices with the batch split over them
(`config.mesh.cpu_devices`); `x1` is one device whose every op XLA parallelises over both cores, the trainer
before that change. Splitting the batch gains 42% at the nanoGPT shape and 14% at the quickstart's: the step is
about 340 fused ops, most well under a millisecond at these shapes, and each op split across the cores and joined again
costs more than two devices each running every op on their half of the rows (measured also as CPU time: 94 -> 64
ms per forward + backward at the nanoGPT shape, on a loaded machine). Where the time still goes (a
`jax.profiler` trace of the gradient at the nanoGPT shape): the matmuls ~56% (59 dots, YNNPACK), reductions
(bias gradients, LayerNorm statistics) ~8%, GELU's tanh passes ~5%, head split/merge transposes ~7%. So the
>= 1.5x goal is not met: 1.28x at the nanoGPT shape, 0.91x at the quickstart's, whose 2,048-token vocabulary
makes the logits matmul and softmax a larger share.

Re-measured 2026-12-03 on another 2-core VM of the project (Intel Xeon with AVX-512; `uptime` right after: 1.3 / 1.9 / 2.0),
`python experiments/bench_train.py --rounds=5 --frameworks=jax,torch`, after two changes found in a profile of
the quickstart's gradient (a `jax.profiler` trace read with xprof, and `getrusage` page-fault counts):
- `gptjax/host_memory.py`: XLA:CPU's 87 MB temporary buffer per device was `mmap`-ed afresh by glibc at every
  step (42,600 page faults, 175 MB, per step); glibc now keeps its memory, with one arena for steps that large.
- `gptjax/dots.py`: the weight gradients take the narrower operand as the one XLA copies into column order
  (the logits' gradient, 8 MB, was copied for the embedding's gradient).

  | shape        | framework          |     params |                 tokens/s |  ms/step |         peak memory |    MFU |           vs torch |
  |--------------|--------------------|------------|--------------------------|----------|---------------------|--------|--------------------|
  | nanogpt_cpu  | jax 0.10.2 x2      |    809,856 |   22,682 [17,662-23,354] |     33.9 |   0.56 GiB host RSS |    n/a |  1.27x [1.03-1.37] |
  | nanogpt_cpu  | torch 2.13.0+cpu   |    809,856 |   17,345 [16,955-17,923] |     44.3 |   0.64 GiB host RSS |    n/a |                    |
  | quickstart   | jax 0.10.2 x2      |  1,071,872 |   18,105 [14,523-19,021] |    113.1 |   0.69 GiB host RSS |    n/a |  1.10x [0.96-1.18] |
  | quickstart   | torch 2.13.0+cpu   |  1,071,872 |   16,438 [15,195-17,038] |    124.6 |   0.90 GiB host RSS |    n/a |                    |

The same command on this machine before the two changes (3 rounds): quickstart 142.7 ms per step, 0.85x
[0.64-0.90]; nanoGPT 32.5 ms, 1.22x. The quickstart's gradient alone (best of 5 x 20 calls, two devices): 129 ms
before, 102 after the allocator, 98 after the products. Where its 98 ms per device still go: matmuls (YNNPACK)
66 ms for ~7 GFLOP, about 100 GFLOP/s, against a nominal (not measured) ~190 GFLOP/s per AVX-512 core; the
gradients' all-reduce 6.6 ms, mostly the two devices waiting for each other (one tuple of 54 arrays; a step
with a single psum of the concatenated gradients under `shard_map` was no faster: 31.7 against 29.9 ms at
nanoGPT's shape); the attention's batched products 5.4 ms; the rest elementwise. So the >= 1.5x goal is still not met at either shape.

On a loaded machine (the previous revision of this table, load 4-6) the ratios were far higher (1.4x at both
shapes, single rounds up to 18x) because PyTorch's OpenMP threads degrade far worse than XLA's when other jobs
take the cores; that is not a fair comparison, so the quiet figures above are the ones to quote.
"""

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

SHAPES = {
    # name: (num_layers, num_heads, emb_dim, vocab_size, seq_len, batch_size)
    "nanogpt_cpu": (4, 4, 128, 65, 64, 12),
    "quickstart": (4, 4, 128, 2048, 128, 16),
    "small": (4, 4, 256, 8192, 128, 8),
    "gpt2_small": (12, 12, 768, 50257, 1024, 8),
    "gpt2_medium": (24, 16, 1024, 50257, 1024, 4),
}

_SHAPES = flags.DEFINE_list("shapes", ["nanogpt_cpu", "quickstart"], f"Shapes to run, of {sorted(SHAPES)}.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Sequences per step; 0 = the shape's own.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Tokens per sequence (and the model's block_size); 0 = the shape's.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds; the frameworks take turns within each.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation, allocator warm-up).")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "jax1", "torch"],
                                "Which sides to run: jax (the trainer's CPU default, one XLA device per core), "
                                "jax1 (one CPU device), torch.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "Wrap the PyTorch model in torch.compile.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: 'framework:shape', driven over stdin.")


def _shape(name):
  layers, heads, width, vocab, seq_len, batch = SHAPES[name]
  return layers, heads, width, vocab, _SEQ_LEN.value or seq_len, _BATCH.value or batch


def _batches(name, count):
  *_, vocab, seq_len, batch = _shape(name)
  rng = np.random.default_rng(0)
  return [rng.integers(0, vocab, (batch, seq_len + 1), dtype=np.int32) for _ in range(count)]


def _model_config(name, on_gpu: bool):
  from gptjax import model as model_lib  # pylint: disable=g-import-not-at-top
  layers, heads, width, vocab, seq_len, _ = _shape(name)
  return model_lib.ModelConfig(vocab_size=vocab, block_size=seq_len, num_layers=layers, num_heads=heads,
                               emb_dim=width, mlp_dim=4 * width, dropout_rate=0.0, attention_dropout_rate=0.0,
                               dtype="bfloat16" if on_gpu else "float32")


def _peak_host_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB.


def _jax_side(name, one_device: bool = False):
  """(run(n) -> (seconds, last loss), info dict) for gptjax.

  On a CPU the trainer splits the cores into XLA devices that the batch is split over (`config.mesh.cpu_devices`,
  `gptjax.sharding.split_cpu_cores`); this does the same unless `one_device` (the 'jax1' rows: one device whose
  ops are parallelised over the cores by XLA's thread pool).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from gptjax import host_memory, metrics as metrics_lib, model as model_lib, optim, sharding, trainer  # pylint: disable=g-import-not-at-top
  batch = _shape(name)[-1]
  devices = 1 if one_device else sharding.split_cpu_cores(sharding.cpu_device_count(0, [batch])) or 1
  # As the trainer decides (`gptjax.train.loop.split_cpu_cores`): one allocator arena for large steps.
  host_memory.one_arena_for_training(_model_config(name, on_gpu=False), batch // devices)

  on_gpu = jax.devices()[0].platform == "gpu"
  config = _model_config(name, on_gpu)
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(lr=3e-4, warmup_steps=1, total_steps=1000)
  state, shardings = trainer.init_train_state(config, tx, mesh, jax.random.key(0))
  step = jax.jit(trainer.make_train_step(model_lib.GPT(config), tx, mesh),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
  batches = [sharding.global_batch(b, mesh) for b in _batches(name, _WARMUP.value + _STEPS.value)]
  holder = {"state": state}

  def run(batches):
    with jax.set_mesh(mesh), sharding.axis_rules():
      start = time.perf_counter()
      for b in batches:
        holder["state"], metrics = step(holder["state"], b, rng)
      loss = float(metrics["loss"])  # Waits for the last step.
      return time.perf_counter() - start, loss

  run(batches[:_WARMUP.value])
  devices = f" x{jax.device_count()}" if jax.devices()[0].platform == "cpu" else ""
  info = {"framework": f"jax {jax.__version__}{devices}", "device": jax.devices()[0].device_kind,
          "params": model_lib.count_params(state.params), "num_devices": jax.device_count(),
          "flops_per_token": metrics_lib.flops_per_token(config, config.block_size),
          "peak_flops": metrics_lib.peak_flops_per_device()}

  def peak():
    stats = jax.devices()[0].memory_stats() if on_gpu else None
    return (stats["peak_bytes_in_use"], "device") if stats else (_peak_host_bytes(), "host RSS")

  return lambda: run(batches[_WARMUP.value:]), info, peak


def _torch_side(name):
  """(run() -> (seconds, last loss), info dict) for Hugging Face PyTorch."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from gptjax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top  (FLOP count only)

  on_gpu = torch.cuda.is_available()
  device = torch.device("cuda" if on_gpu else "cpu")
  config = _model_config(name, on_gpu)
  torch.manual_seed(0)
  hf_config = transformers.GPT2Config(
      vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.emb_dim,
      n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.mlp_dim, resid_pdrop=0.0, embd_pdrop=0.0,
      attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
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

  batches = [torch.from_numpy(b).long().to(device) for b in _batches(name, _WARMUP.value + _STEPS.value)]

  def run(batches):
    if on_gpu:
      torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches:
      loss = train_step(b)
    loss = loss.item()  # Waits for the last step.
    return time.perf_counter() - start, loss

  run(batches[:_WARMUP.value])
  info = {"framework": f"torch {torch.__version__}" + (" (compiled)" if _TORCH_COMPILE.value else ""),
          "device": torch.cuda.get_device_name() if on_gpu else "cpu",
          "params": sum(p.numel() for p in model.parameters()), "num_devices": 1,
          "flops_per_token": metrics_lib.flops_per_token(config, config.block_size),
          "peak_flops": metrics_lib.peak_flops_per_device() if on_gpu else None}

  def peak():
    return (torch.cuda.max_memory_allocated(), "device") if on_gpu else (_peak_host_bytes(), "host RSS")

  return lambda: run(batches[_WARMUP.value:]), info, peak


def _serve_worker(spec):
  """Builds one side, then answers 'run' (one round) and 'done' (peak memory) on stdin, one JSON line each."""
  framework, name = spec.split(":")
  sides = {"jax": _jax_side, "jax1": lambda n: _jax_side(n, one_device=True), "torch": _torch_side}
  run, info, peak = sides[framework](name)
  print("READY " + json.dumps(info), flush=True)
  for line in sys.stdin:
    if line.strip() == "run":
      elapsed, loss = run()
      print("ROUND " + json.dumps({"elapsed": elapsed, "loss": loss}), flush=True)
    else:
      peak_bytes, kind = peak()
      print("DONE " + json.dumps({"peak_bytes": peak_bytes, "memory_kind": kind}), flush=True)
      return


class _Worker:
  """One framework on one shape in its own process."""

  def __init__(self, framework, name):
    args = [sys.executable, __file__, f"--worker={framework}:{name}"] + [
        a for a in sys.argv[1:] if not a.startswith(("--frameworks", "--shapes"))]
    self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=dict(os.environ))
    self.info = self._read("READY")

  def _read(self, tag):
    for line in self.proc.stdout:
      if line.startswith(tag + " "):
        return json.loads(line[len(tag) + 1:])
    raise RuntimeError(f"The {self.proc.args[2]} worker failed:\n{self.proc.stderr.read()[-4000:]}")

  def ask(self, command, tag):
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read(tag)

  def close(self):
    result = self.ask("done", "DONE")
    self.proc.wait()
    return result


def main(argv):
  del argv
  if _WORKER.value:
    _serve_worker(_WORKER.value)
    return
  workers = {}
  for name in _SHAPES.value:
    for side in _FRAMEWORKS.value:
      # Started one at a time: two compilations at once on a 2-core machine would only slow both.
      workers[name, side] = _Worker(side, name)
  rounds = {key: [] for key in workers}
  loads = []  # The 1-minute load average before each round: how busy the shared machine was.
  for _ in range(_ROUNDS.value):
    for key, worker in workers.items():
      loads.append(os.getloadavg()[0])
      rounds[key].append(worker.ask("run", "ROUND"))
  peaks = {key: worker.close() for key, worker in workers.items()}

  print(f"\n{_ROUNDS.value} rounds of {_STEPS.value} timed steps after {_WARMUP.value}, frameworks taking turns; "
        f"tokens/s is the median over rounds (min-max in brackets); load average {min(loads):.1f}-{max(loads):.1f} "
        f"(median {np.median(loads):.1f}) on {os.cpu_count()} CPUs\n")
  print(f"| {'shape':<12} | {'framework':<18} | {'params':>10} | {'tokens/s':>24} | {'ms/step':>8} | "
        f"{'peak memory':>19} | {'MFU':>6} | {'vs torch':>18} |")
  print("|" + "|".join("-" * n for n in (14, 20, 12, 26, 10, 21, 8, 20)) + "|")
  for name in _SHAPES.value:
    *_, seq_len, batch = _shape(name)
    tokens = batch * seq_len * _STEPS.value
    rates = {side: np.array([tokens / r["elapsed"] for r in rounds[name, side]]) for side in _FRAMEWORKS.value}
    for side in _FRAMEWORKS.value:
      info, peak, rate = workers[name, side].info, peaks[name, side], rates[side]
      mfu = (np.median(rate) * info["flops_per_token"] / (info["peak_flops"] * info["num_devices"])
             if info["peak_flops"] else None)
      versus = ""
      if side != "torch" and "torch" in rates:
        ratio = rate / rates["torch"]  # Neighbours in time: the noise of the shared machine mostly cancels.
        versus = f"{np.median(ratio):.2f}x [{ratio.min():.2f}-{ratio.max():.2f}]"
      spread = f"{np.median(rate):,.0f} [{rate.min():,.0f}-{rate.max():,.0f}]"
      memory = f"{peak['peak_bytes'] / 2**30:.2f} GiB {peak['memory_kind']}"
      print(f"| {name:<12} | {info['framework']:<18} | {info['params']:>10,} | {spread:>24} | "
            f"{1000 * batch * seq_len / np.median(rate):>8.1f} | {memory:>19} | "
            f"{f'{100 * mfu:.1f}%' if mfu is not None else 'n/a':>6} | {versus:>18} |")


if __name__ == "__main__":
  app.run(main)
