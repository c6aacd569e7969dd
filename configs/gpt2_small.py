"""GPT-2 small (124,439,808 parameters): 12 layers, 12 heads, width 768, 1024 context, 50257-token BPE.

Run:  python -m gptjax.train --config configs/gpt2_small.py --workdir /tmp/gpt2_small
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.num_layers = 12  # GPT-2 paper, Table 2.
  config.model.num_heads = 12  # Head dimension 64.
  config.model.emb_dim = 768
  config.model.mlp_dim = 4 * 768
  return config
