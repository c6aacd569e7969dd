"""Distillation: the quickstart model (4 layers) taught to a 2-layer student made of its blocks 0 and 2, on a CPU.

Run (after `python -m gptjax.train --config configs/quickstart.py --workdir /tmp/quickstart`):

  python -m gptjax.train --config configs/distill.py --workdir /tmp/distill --config.distill.teacher=/tmp/quickstart

The loss (gptjax/train/distill.py) is 0.5 * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + 0.5 * CE at
T = 2, the defaults of the script DistilGPT2 was trained with; the student starts from teacher blocks 0 and 2 with
the teacher's embeddings and final LayerNorm, as DistilGPT2 started from blocks 0, 2, 4, 7, 9, 11 of GPT-2. It reads
the teacher's corpus (the same stdlib text and validation split) with the teacher's tokenizer. DistilGPT2's own
recipe is `--config.distill.teacher=gpt2 --config.distill.student_layers='(0, 2, 4, 7, 9, 11)'` with the data,
context and batch of configs/gpt2_small.py (an accelerator job).

Expected: see experiments/bench_distill.py, which runs this config (teacher: configs/quickstart.py, 300 steps) beside
the same student trained on cross-entropy alone; its docstring has the measured table.

Then:  python -c "import gptjax; print(gptjax.load('/tmp/distill').predict('import os'))"
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.distill.teacher = "/tmp/quickstart"  # The quickstart's documented workdir; any model folder or hub name.
  config.distill.student_layers = (0, 2)  # Every other block of the teacher's 4: half the depth.
  config.data.tokenizer = ""  # The teacher's (<teacher>/tokenizer): the KL compares the same ids.

  config.train.steps = 150  # Half the teacher's budget: 150 x 16 x 128 = 307k tokens.
  config.opt.warmup_steps = 10  # The copied blocks are trained already: a short warmup.
  config.opt.lr = 1e-3  # A third of the teacher's peak: fine-tuning copied weights, not training from scratch.
  config.train.eval_every = 50
  config.eval.tasks = ""  # The validation loss and perplexity of every evaluation are the result.
  return config
