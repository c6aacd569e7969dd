"""Distillation on a CPU: the quickstart model as teacher, a half-depth student distilled from it, and the same
student trained on cross-entropy alone; validation perplexity and decode speed of all three.

  PYTHONPATH=$PWD python experiments/bench_distill.py [--steps 150] [--teacher_steps 300] [--from_scratch]

Teacher: configs/quickstart.py trained `--teacher_steps` steps (4 layers; cached under
~/.cache/gptjax-bench/quickstart-<steps>, shared with bench_quantize.py). Students: configs/distill.py, 2 layers,
`--steps` steps each on the teacher's corpus, batches and tokenizer. The first two start from teacher blocks 0 and
2 with its embeddings and final LayerNorm: one with the config's loss (0.5 * T^2 * KL + 0.5 * CE, T = 2), one with
cross-entropy alone (alpha_kd = 0, alpha_lm = 1): the same initial weights, batches, learning rate and steps, so
the comparison isolates the teacher's signal (the CE-only step still runs the teacher forward, unused).
`--from_scratch` adds three 2-layer students from random weights (lr 3e-3, warmup 30, as the teacher's recipe):
KD alone at T = 1, the config's loss, and CE alone.

Columns: parameters; perplexity of the quickstart run's validation text (token level, `lm.score` on 40 pieces of
2,000 characters, each scored from its start; the same text for every row) and its ratio to the teacher's;
greedy decode tokens/s of one slot (a 16-token prompt, `--tokens` new tokens, after compilation; models timed in
turn, 5 rounds, the best of each) and its ratio to the teacher's; the student's training wall time (teacher
loading, tokenising and compiling included). Then decode speed alone of GPT-2 small's shape and DistilGPT2's
(blocks 0, 2, 4, 7, 9, 11), random weights.

Goals, from the published anchor DistilGPT2 (WikiText-103 perplexity 21.1 against GPT-2's 16.3, a
ratio of 1.29, at twice the speed): student / teacher perplexity <= 1.29; the distilled student >= 10% lower in
perplexity than the cross-entropy-only one; decoding >= 1.8x the teacher's.

Measured 2026-12-02 on the shared 2-core CPU (load average 7 to 10 from other jobs), `--from_scratch`, 14:40 wall
in all (the teacher cached; without `--from_scratch` about 9 minutes by the rows' times; training the
teacher first adds 9):

  teacher 300 steps, students 150 steps each (16 x 128 tokens per step)
  | model | layers | params | val ppl | x teacher | decode tok/s | x teacher | train s |
  | --- | --- | --- | --- | --- | --- | --- | --- |
  | teacher (quickstart) | 4 | 1,071,872 | 145.09 | 1.000 | 3369.1 | 1.00x | - |
  | blocks 0, 2 + KD (T=2, 0.5 KD + 0.5 CE) | 2 | 675,328 | 132.45 | 0.913 | 7155.1 | 2.12x | 167 |
  | blocks 0, 2, CE only | 2 | 675,328 | 131.58 | 0.907 | 9403.5 | 2.79x | 162 |
  | scratch + KD (T=1, KD only) | 2 | 675,328 | 165.97 | 1.144 | 9246.7 | 2.74x | 117 |
  | scratch + KD (T=2, 0.5 KD + 0.5 CE) | 2 | 675,328 | 267.52 | 1.844 | 5277.7 | 1.57x | 132 |
  | scratch, CE only | 2 | 675,328 | 235.44 | 1.623 | 7911.8 | 2.35x | 150 |

  GPT-2 small shape and its 6-layer student (random weights: speed only; 32-token prompt, 112 new tokens)
  | model | layers | params | decode tok/s | x teacher |
  | --- | --- | --- | --- | --- |
  | GPT-2 small shape | 12 | 124,439,808 | 17.4 | 1.00x |
  | DistilGPT2 shape | 6 | 81,912,576 | 31.9 | 1.83x |

Against the goals, honestly:
- Perplexity ratio <= 1.29: met, but not the way DistilGPT2 meets it. The students from blocks 0 and 2 end *below*
  the teacher (0.91x) because the teacher is undertrained (300 steps, 0.75 epoch) and they train 150 steps more on
  the same text. The fairer reading is the student from scratch with KD alone: 1.14x the teacher's perplexity at
  half its steps and 63% of its parameters.
- Distilled >= 10% lower than CE only: not met with the config's defaults. From the teacher's blocks the defaults
  give 132.45 against 131.58 (0.7% worse; likely the teacher's term pulls the student back towards a teacher it is
  already passing); from scratch they give 267.52 against 235.44 (14% worse; likely at T = 2 the softened KL
  carries little, and alpha_lm = 0.5 halves the data's term). KD alone at T = 1 from scratch is the row that meets
  it: 165.97 against 235.44, 29.5% lower. At this scale the temperature and the weights decide whether distillation
  helps; the defaults are DistilGPT2's, kept for that recipe, not tuned here.
- Decode >= 1.8x: met for DistilGPT2's shape (1.83x, where the blocks dominate; the embeddings and the 50257-row
  output head cost the same in both, so 2x is out of reach). The quickstart rows' speeds are not trustworthy: the
  five students have one architecture yet range from 5,278 to 9,404 tok/s, so load from other jobs sets them; at
  0.1 to 0.3 ms per token the fixed cost of a decode step, not the 2 blocks, dominates. Rerun alone before quoting
  them. No accelerator was used.
The perplexities are deterministic (two runs of the first two students gave the same figures to 0.01). Measured
before `config.mesh.cpu_devices` split the CPU into several XLA devices: a rerun now shards the batch over them,
which may move the last digits and the times.

A stronger teacher (measured 2026-12-02 on the same machine nearly idle, load ~2, with the CPU split;
`--teacher_steps=1000 --from_scratch --skip_gpt2`, 5 minutes with the teacher cached, 3 more to train it):

  teacher 1000 steps, students 150 steps each (16 x 128 tokens per step)
  | model | layers | params | val ppl | x teacher | decode tok/s | x teacher | train s |
  |---|---|---|---|---|---|---|---|
  | teacher (quickstart) | 4 | 1,071,872 | 64.48 | 1.000 | 4177.7 | 1.00x | - |
  | blocks 0, 2 + KD (T=2, 0.5 KD + 0.5 CE) | 2 | 675,328 | 60.29 | 0.935 | 6935.2 | 1.66x | 34 |
  | blocks 0, 2, CE only | 2 | 675,328 | 63.57 | 0.986 | 7162.6 | 1.71x | 34 |
  | scratch + KD (T=1, KD only) | 2 | 675,328 | 149.97 | 2.326 | 5400.6 | 1.29x | 35 |
  | scratch + KD (T=2, 0.5 KD + 0.5 CE) | 2 | 675,328 | 233.90 | 3.627 | 6194.7 | 1.48x | 38 |
  | scratch, CE only | 2 | 675,328 | 195.24 | 3.028 | 6962.0 | 1.67x | 38 |

With a teacher worth learning from, the defaults help: the student of blocks 0 and 2 distilled with DistilGPT2's
loss ends 5.2% below the same student trained on cross-entropy alone (60.29 against 63.57; the 300-step teacher
gave -0.7%), at 0.94x the teacher's perplexity. From scratch, KD alone at T = 1 is 23.2% below cross-entropy alone
(149.97 against 195.24), but 150 steps from random weights leave it at 2.3x a 1000-step teacher. So no single
student meets all three goals yet: the copied-blocks student meets the ratio (<= 1.29) and not the 10% margin; the
scratch student the margin and not the ratio. (A second run of the first two rows, without `--from_scratch`, gave
the same perplexities.)

A sweep with the 1000-step teacher (perplexity 64.48), students of blocks 0 and 2, validation perplexity as in the
table (deterministic; measured 2026-12-02). Each loss at its own best of the rates tried, against cross-entropy
alone at *its* best rate, so that tuning favours neither:

  | student steps | KD loss, rate | ppl | CE only, best rate | ppl | KD below CE |
  |---|---|---|---|---|---|
  | 50 | T=1, 0.5 KD + 0.5 CE, 1e-3 | 68.58 | 1e-3 (3e-3: 80.10) | 74.08 | 7.4% |
  | 150 | T=1, 0.5 KD + 0.5 CE, 3e-3 | 57.11 | 3e-3 (1e-3: 63.57, 3e-4: 68.69) | 62.37 | 8.4% |
  | 300 | T=1, 0.5 KD + 0.5 CE, 3e-3 | 52.17 | 3e-3 (1e-3: 56.94) | 54.08 | 3.5% |

Other losses at 150 steps, rate 1e-3: KD alone at T=1 67.13, at T=2 67.37 (a student that only imitates stays near
its teacher's 64.48); 0.9 KD + 0.1 CE at T=2 63.81; 0.5 + 0.5 at T=1 59.60 (T=2: 60.29, the table's row); at 3e-3,
0.7 KD + 0.3 CE at T=1 57.97. So T=1 beats T=2 here, an equal mix beats either term alone, and the margin over
cross-entropy peaks near 150 steps: with more, the student passes a teacher this weak and its term holds it back.

A stronger teacher, 3000 steps (measured 2026-12-02 on the same machine, load ~1.5; `--teacher_steps=3000
--skip_gpt2`, 3:13 wall with the teacher cached; training it took about 11 more minutes, with tests running beside it):

  teacher 3000 steps, students 150 steps each (16 x 128 tokens per step)
  | model | layers | params | val ppl | x teacher | decode tok/s | x teacher | train s |
  |---|---|---|---|---|---|---|---|
  | teacher (quickstart) | 4 | 1,071,872 | 45.05 | 1.000 | 5323.7 | 1.00x | - |
  | blocks 0, 2 + KD (T=2, 0.5 KD + 0.5 CE) | 2 | 675,328 | 44.04 | 0.978 | 7283.8 | 1.37x | 44 |
  | blocks 0, 2, CE only | 2 | 675,328 | 46.72 | 1.037 | 8304.7 | 1.56x | 43 |
  | blocks 0, 2 + KD (T=1, 0.5 KD + 0.5 CE), lr 3e-3 | 2 | 675,328 | 40.55 | 0.900 | 7376.1 | 1.39x | 39 |
  | blocks 0, 2, CE only, lr 3e-3 | 2 | 675,328 | 45.33 | 1.006 | 7464.5 | 1.40x | 39 |

Against the goals: the tuned pair meets two. Perplexity ratio 0.90 (<= 1.29), and the distilled student is 10.5%
below cross-entropy alone at the same rate, steps and initial weights (40.55 against 45.33; the defaults give 5.7%,
44.04 against 46.72). Decode >= 1.8x is not met at this shape: 1.37x-1.56x for four students of one architecture
(the spread is the machine's), because at width 128 and a 2,048-token vocabulary the per-token fixed cost (the
output head, sampling, the host) is a large share of a step, so half the blocks cannot halve the time. At
DistilGPT2's shape, where the blocks dominate, it is 1.83x (the GPT-2 table above).

Decode speed alone, measured 2026-12-03 on another 2-core VM (Intel Xeon, load ~1.5): the quickstart's shape with
random weights (4 layers) against its blocks 0 and 2, `decode_speeds` as above (16-token prompt, 112 tokens, best
of 5 rounds), twice: 3,618 / 5,170 and 3,728 / 5,414 tok/s, 1.43x and 1.45x. Per extra token (the cost of one
more step, from 1- and 96-token calls): 0.26-0.27 ms with 4 layers, 0.15-0.17 ms with 2, 0.09 with 1 and 0.42
with 8, i.e. about 0.05 ms per block and 0.04-0.05 ms per step that no block count changes (the 2,048-row output
product, choosing the token, the loop). With that fixed part the ratio of 4 to 2 blocks is at most
(0.045 + 4 x 0.05) / (0.045 + 2 x 0.05) = 1.7x, below the goal of 1.8x however fast the blocks get; the
DistilGPT2 shape, where the blocks dominate, reaches it (1.83x above). Selecting the greedy token by two plain
reductions instead of `jnp.argmax` (`sampling.greedy`) cut that fixed part by ~4 us per step in a microbenchmark.
After the decode step's attention stopped copying the cache heads-major (`gptjax/model.py`) and small programs
read transposed kernels (`gptjax/dots.py`), the same measurement three times: 3,153 / 5,101, 3,203 / 5,240 and
3,181 / 4,778 tok/s, 1.62x, 1.64x and 1.50x: closer, still below 1.8x.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import tempfile
import time

import gptjax
from gptjax import data
from gptjax import model as model_lib
from gptjax.workflow import fit, load_config

from bench_quantize import greedy, perplexity, trained_quickstart  # pylint: disable=g-bad-import-order

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "distill.py"


def decode_speeds(models, prompt, tokens: int, rounds: int = 5) -> list[float]:
  """Greedy tokens per second of one slot for each model: after a compiling run each, `rounds` rounds that time
  every model in turn (load that shifts during the measurement hits them alike), the best round of each."""
  for lm in models:
    greedy(lm, prompt, tokens)
  best = [0.0] * len(models)
  for _ in range(rounds):
    for i, lm in enumerate(models):
      start = time.perf_counter()
      n = len(greedy(lm, prompt, tokens))
      best[i] = max(best[i], n / (time.perf_counter() - start))
  return best


def student(teacher_dir: pathlib.Path, workdir: pathlib.Path, steps: int, lr: float = 0.0, **distill):
  """(trained student, training seconds): configs/distill.py on `teacher_dir` with `config.distill` overrides, and
  from scratch (student_layers=()) the teacher's warmup and 3x learning rate; `lr` > 0 sets the peak rate."""
  config = load_config(str(CONFIG))
  config.distill.teacher = str(teacher_dir)
  config.train.steps = steps
  config.distill.update(distill)
  if not config.distill.student_layers:
    config.distill.student.num_layers = 2
    config.opt.lr, config.opt.warmup_steps = 3e-3, 30
  if lr:
    config.opt.lr = lr
  start = time.perf_counter()
  lm = fit(config, workdir)
  return lm, time.perf_counter() - start


# name: config.distill overrides. CE only = the same run without the teacher's term.
STUDENTS = {
    "blocks 0, 2 + KD (T=2, 0.5 KD + 0.5 CE)": {},
    "blocks 0, 2, CE only": {"alpha_kd": 0.0, "alpha_lm": 1.0},
    # The best pair of a sweep (see the docstring): T = 1 and the teacher's peak rate, for both losses.
    "blocks 0, 2 + KD (T=1, 0.5 KD + 0.5 CE), lr 3e-3": {"temperature": 1.0, "lr": 3e-3},
    "blocks 0, 2, CE only, lr 3e-3": {"alpha_kd": 0.0, "alpha_lm": 1.0, "lr": 3e-3},
}
SCRATCH_STUDENTS = {
    "scratch + KD (T=1, KD only)": {"student_layers": (), "temperature": 1.0, "alpha_kd": 1.0, "alpha_lm": 0.0},
    "scratch + KD (T=2, 0.5 KD + 0.5 CE)": {"student_layers": ()},
    "scratch, CE only": {"student_layers": (), "alpha_kd": 0.0, "alpha_lm": 1.0},
}


def gpt2_speed(tokens: int) -> None:
  """Decode speed of GPT-2 small's shape and of DistilGPT2's (its blocks 0, 2, 4, 7, 9, 11), random weights: at
  this size the blocks, not the per-token overhead, set the speed."""
  from gptjax.model import gpt2_config  # pylint: disable=g-import-not-at-top
  from gptjax.train.distill import copy_layers  # pylint: disable=g-import-not-at-top
  from tests.tiny_lm import random_lm  # pylint: disable=g-import-not-at-top
  teacher = random_lm(gpt2_config("small", dropout_rate=0.0, attention_dropout_rate=0.0))
  layers = (0, 2, 4, 7, 9, 11)
  student = gptjax.LanguageModel(dataclasses.replace(teacher.config, num_layers=len(layers)),
                                 copy_layers(teacher.params, layers))
  speeds = decode_speeds([teacher, student], list(range(1, 33)), tokens, rounds=3)
  print("\nGPT-2 small shape and its 6-layer student (random weights: speed only; 32-token prompt)")
  print("| model | layers | params | decode tok/s | x teacher |\n|---|---|---|---|---|")
  for (name, lm), speed in zip((("GPT-2 small shape", teacher), ("DistilGPT2 shape", student)), speeds):
    print(f"| {name} | {lm.config.num_layers} | {model_lib.count_params(lm.params):,} | {speed:.1f} | "
          f"{speed / speeds[0]:.2f}x |", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=150, help="training steps of each student")
  parser.add_argument("--teacher_steps", type=int, default=300, help="the quickstart teacher's steps")
  parser.add_argument("--tokens", type=int, default=112, help="greedy tokens per decode timing")
  parser.add_argument("--from_scratch", action="store_true", help="also three 2-layer students from scratch")
  parser.add_argument("--skip_gpt2", action="store_true", help="leave out the GPT-2 / DistilGPT2 shape speeds")
  parser.add_argument("--workdir", default="", help="where the students train ('' = a temporary folder)")
  args = parser.parse_args()
  teacher = trained_quickstart(args.teacher_steps)
  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_distill_"))
  rows = [("teacher (quickstart)", teacher, None)]
  for i, (name, overrides) in enumerate({**STUDENTS, **(SCRATCH_STUDENTS if args.from_scratch else {})}.items()):
    lm, seconds = student(teacher.workdir, root / f"student_{i}", args.steps, **overrides)
    rows.append((name, lm, seconds))
  # The quickstart run's own held-out text (configs/quickstart.py's source, cap and fraction).
  val_text = "".join(data.load_corpus("builtin:python", val_fraction=0.1, builtin_max_bytes=3_000_000).val)
  texts = [val_text[i:i + 2000] for i in range(0, min(len(val_text), 80_000), 2000)]
  prompt = teacher.tokenizer.encode(texts[0])[:16]
  print(f"\nteacher {args.teacher_steps} steps, students {args.steps} steps each (16 x 128 tokens per step)")
  print("| model | layers | params | val ppl | x teacher | decode tok/s | x teacher | train s |")
  print("|---|---|---|---|---|---|---|---|")
  speeds = decode_speeds([lm for _, lm, _ in rows], prompt, args.tokens)
  ppls = [perplexity(lm, texts) for _, lm, _ in rows]
  for (name, lm, seconds), ppl, speed in zip(rows, ppls, speeds):
    train = "-" if seconds is None else f"{seconds:.0f}"
    print(f"| {name} | {lm.config.num_layers} | {model_lib.count_params(lm.params):,} | {ppl:.2f} | "
          f"{ppl / ppls[0]:.3f} | {speed:.1f} | {speed / speeds[0]:.2f}x | {train} |", flush=True)
  print(f"(students in {root}; gptjax.load works on each)")
  if not args.skip_gpt2:
    gpt2_speed(args.tokens)


if __name__ == "__main__":
  main()
