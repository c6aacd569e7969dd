"""Hugging Face PyTorch models as the independent reference: random weights in every tensor; logits and
log-probabilities (a sliding window's too, target by target) computed by PyTorch."""

import numpy as np
import torch
import transformers


def random_hf_model(arch: str, vocab: int, context: int, layers: int, heads: int, width: int, seed: int = 0):
  """A `GPT2LMHeadModel` ('gpt2') or `OpenAIGPTLMHeadModel` ('openai-gpt') with every parameter random.

  HF's init leaves LayerNorms at (1, 0) and biases at 0, where a wrongly mapped or dropped tensor is invisible: here
  LayerNorm scales are 1 + N(0, 0.3), biases and LayerNorm offsets N(0, 0.3), matrices N(0, 0.1).
  """
  torch.manual_seed(seed)
  if arch == "gpt2":
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_layer=layers, n_head=heads,
                                     n_embd=width)
    model = transformers.GPT2LMHeadModel(config)
  else:
    config = transformers.OpenAIGPTConfig(vocab_size=vocab, n_positions=context, n_layer=layers, n_head=heads,
                                          n_embd=width)
    model = transformers.OpenAIGPTLMHeadModel(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if "ln" in name or "bias" in name else 0.1) + (1.0 if
              name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0))
  return model.eval()


def torch_logits(model, ids) -> np.ndarray:
  """PyTorch's logits [B, T, V] for int ids [B, T]."""
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def next_token_logprobs(model, ids) -> np.ndarray:
  """log p(ids[t + 1] | ids[:t + 1]) for t = 0 .. len(ids) - 2, by PyTorch in float64."""
  with torch.no_grad():
    logits = model(torch.tensor([list(ids[:-1])])).logits[0].double()
  logprobs = torch.log_softmax(logits, -1)
  return logprobs.gather(1, torch.tensor(list(ids[1:]))[:, None])[:, 0].numpy()


def window_logprob(model, stream, context: int, stride: int) -> float:
  """Sums each target's log-prob given exactly the context the sliding-window rule gives it, target by target.

  Target i (predicting stream[i + 1]) is scored by the first window that reaches it: the window starting at 0
  when i < context, else at ceil((i + 1 - context) / stride) * stride.
  """
  n = len(stream) - 1
  begins = [0 if i < context else -(-(i + 1 - context) // stride) * stride for i in range(n)]
  total = 0.0
  for begin in sorted(set(begins)):
    targets = [i for i in range(n) if begins[i] == begin]
    logprobs = next_token_logprobs(model, stream[begin:max(targets) + 2])
    total += sum(logprobs[i - begin] for i in targets)
  return total
