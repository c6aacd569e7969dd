"""The host allocator settings (`gptjax/host_memory.py`): a program's large temporary buffer stops being mapped
afresh at every execution once one arena is in force, and the trainer asks for it only for large steps."""

import os
import subprocess
import sys
import textwrap

import pytest

from configs import quickstart

_PROBE = textwrap.dedent("""
    import os, resource, sys
    mode = sys.argv[1]
    from gptjax import host_memory
    if mode == "one_arena":
      host_memory.one_arena()
    import jax, jax.numpy as jnp
    x = jnp.ones((4096, 256), jnp.float32)
    # A [4096, 4096] product (64 MiB) that lives only inside the program: a temporary buffer of each execution.
    f = jax.jit(lambda x: jax.lax.optimization_barrier(x @ x.T)[:, :8].sum())
    f(x).block_until_ready()
    runs = []
    for _ in range(30):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      runs.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(host_memory.configure(), host_memory.one_arena_applied(), *runs)
""")


def _run(code, *args, **env):
  # The trainer's CPU layout (two devices), not the tests' eight.
  base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**base, "JAX_NUM_CPU_DEVICES": "2", **env},
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.split()


def _page_faults_per_run(mode, **env):
  applied, one_arena, *faults = _run(_PROBE, mode, **env)
  return applied == "True", one_arena == "True", [int(f) for f in faults]


# 64 MiB is 16,384 pages. Without one arena every run maps them afresh; with it the heap grows to hold the block
# within the first runs (a few of which still fault while other blocks settle around it) and reuses it after.
def _faulting(runs):
  return sum(f > 8000 for f in runs) / len(runs)


def test_one_arena_stops_the_page_faults_of_a_large_temporary_buffer():
  applied, one_arena, runs = _page_faults_per_run("one_arena")
  assert applied and one_arena
  assert sum(f < 1000 for f in runs) / len(runs) >= 2 / 3, runs


def test_opting_out_leaves_glibc_alone_and_its_page_faults():
  applied, one_arena, runs = _page_faults_per_run("one_arena", GPTJAX_HOST_ALLOCATOR="system")
  assert not applied and not one_arena
  assert _faulting(runs) >= 1 / 2, runs


@pytest.mark.parametrize("vocab_size, expected", [(2048, True), (65, False)])
def test_the_trainer_asks_for_one_arena_only_when_the_step_outgrows_a_secondary_heap(vocab_size, expected):
  code = textwrap.dedent(f"""
      from configs import quickstart
      from gptjax import host_memory
      from gptjax.train import loop
      config = quickstart.get_config()
      config.mesh.cpu_devices = 2  # The trainer's split of a 2-core machine, on any machine.
      config.model.vocab_size = {vocab_size}
      if {vocab_size} < 100:  # nanoGPT's CPU shape: 12 x 64 tokens, 19 MB of buffers per device.
        config.model.block_size, config.train.batch_size, config.eval.batch_size = 64, 12, 12
      loop.split_cpu_cores(config)
      print(host_memory.one_arena_applied())
  """)
  assert _run(code)[-1] == str(expected)


def test_the_estimate_is_near_what_xla_allocates_for_the_quickstart_step():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gptjax import host_memory, model as model_lib  # pylint: disable=g-import-not-at-top
  from gptjax.train import objectives  # pylint: disable=g-import-not-at-top
  m = quickstart.get_config().model
  config = model_lib.ModelConfig(vocab_size=m.vocab_size, block_size=m.block_size, num_layers=m.num_layers,
                                 num_heads=m.num_heads, emb_dim=m.emb_dim, mlp_dim=m.mlp_dim, dropout_rate=0.0,
                                 attention_dropout_rate=0.0)
  model = model_lib.GPT(config)
  params = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((8, m.block_size + 1), jnp.int32)  # 8 rows: one of the trainer's two devices.
  grad = jax.jit(jax.grad(lambda p, t: objectives.loss_fn(p, t, None, model=model, deterministic=True)[0]))
  allocated = grad.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes
  estimate = host_memory.training_buffer_bytes(config, rows_per_device=8)
  assert allocated > host_memory.SECONDARY_HEAP_BYTES and estimate > host_memory.SECONDARY_HEAP_BYTES
  assert 0.7 < estimate / allocated < 1.5, (estimate, allocated)
