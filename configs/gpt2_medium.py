"""GPT-2 medium (354,823,168 parameters): 24 layers, 16 heads, width 1024, 1024 context, 50257-token BPE.

The recipe (data, optimiser, batch) is `configs/gpt2_small.py`'s; only the shape changes. Lower
`--config.opt.lr` for the larger sizes (the GPT-3 paper used 3e-4 at 350M, 2.5e-4 at 760M, 2e-4 at 1.3B).

Run:  python -m gptjax.train --config configs/gpt2_medium.py --workdir /tmp/gpt2_medium
"""

from configs import gpt2_small


def get_config():
  return gpt2_small.with_size(gpt2_small.get_config(), "medium")
