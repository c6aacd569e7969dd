"""GPT-2 xl (1,557,611,200 parameters): 48 layers, 25 heads, width 1600, 1024 context, 50257-token BPE.

The recipe (data, optimiser, batch) is `configs/gpt2_small.py`'s; only the shape changes. Lower
`--config.opt.lr` for the larger sizes (the GPT-3 paper used 3e-4 at 350M, 2.5e-4 at 760M, 2e-4 at 1.3B).

Run:  python -m gptjax.train --config configs/gpt2_xl.py --workdir /tmp/gpt2_xl
"""

from configs import gpt2_small


def get_config():
  return gpt2_small.with_size(gpt2_small.get_config(), "xl")
