"""The inference engine (gptjax/inference/engine.py, its compiled programs gptjax/inference/programs.py): slots that
requests join and leave, per-request settings in one compiled program, seeds that do not depend on the batch,
log-probabilities against full forward passes, stops, cancellation, compile counts, the forward options (hidden states,
attention, ablations) and bad settings."""

import collections
import dataclasses

import jax
import numpy as np
import pytest

from gptjax import model as M
from gptjax.inference import engine as E
from gptjax.inference.sampling import SamplingSettings
from tests.tiny_lm import TINY, random_lm

S = SamplingSettings
# One settings mix used by several tests: greedy, plain sampling, top-k, top-p, penalties.
MIXED = [S(temperature=0, max_tokens=10), S(temperature=1.0, seed=3, max_tokens=9),
         S(temperature=0.8, top_k=5, seed=4, max_tokens=12), S(temperature=1.2, top_p=0.7, seed=5, max_tokens=7),
         S(temperature=0, repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.7, max_tokens=11),
         S(temperature=1.0, top_k=8, top_p=0.9, frequency_penalty=1.0, seed=6, stream_index=2, max_tokens=8)]


@pytest.fixture(scope="module")
def lm():
  return random_lm(TINY, scale=4.0)


@pytest.fixture(scope="module")
def engine(lm):
  return E.Engine(lm, num_slots=4, max_length=32)


def _prompts(n, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, TINY.vocab_size, rng.integers(1, 12)).tolist() for _ in range(n)]


def _run(scheduler, max_steps=1):
  """Steps until idle; the events of each request."""
  events = collections.defaultdict(list)
  while scheduler.has_work():
    for event in scheduler.step(max_steps=max_steps):
      events[event.request_id].append(event)
  return events


def _alone(engine, prompt, settings):
  scheduler = E.Scheduler(engine)
  scheduler.submit("alone", prompt, settings)
  return _run(scheduler)["alone"]


def _tokens(events):
  return [e.token_id for e in events]


def test_mixed_settings_in_one_batch_equal_each_request_alone(engine):
  prompts = _prompts(len(MIXED))
  scheduler = E.Scheduler(engine)  # 6 requests, 4 slots: two wait and join as others finish.
  for i, (prompt, settings) in enumerate(zip(prompts, MIXED)):
    scheduler.submit(i, prompt, settings)
  together = _run(scheduler)
  for i, (prompt, settings) in enumerate(zip(prompts, MIXED)):
    alone = _alone(engine, prompt, settings)
    assert _tokens(together[i]) == _tokens(alone), i
    np.testing.assert_allclose([e.logprob for e in together[i]], [e.logprob for e in alone], atol=1e-5)
    assert len(alone) == settings.max_tokens and alone[-1].finish_reason == "length"
    assert all(e.finish_reason is None for e in alone[:-1])
  assert len({tuple(_tokens(v)) for v in together.values()}) == len(MIXED)


def test_a_request_joining_a_running_batch_gets_what_it_gets_alone(engine):
  first, late = _prompts(2, seed=1)
  settings = S(temperature=1.0, top_k=10, seed=11, max_tokens=14)
  scheduler = E.Scheduler(engine)
  scheduler.submit("first", first, settings)
  events = collections.defaultdict(list)
  for _ in range(5):
    for event in scheduler.step():
      events[event.request_id].append(event)
  scheduler.submit("late", late, dataclasses.replace(settings, seed=12))
  for key, value in _run(scheduler, max_steps=4).items():
    events[key] += value
  assert _tokens(events["first"]) == _tokens(_alone(engine, first, settings))
  assert _tokens(events["late"]) == _tokens(_alone(engine, late, dataclasses.replace(settings, seed=12)))


def test_batched_prefill_fills_each_slot_as_its_own_prefill_does(engine):
  prompts = _prompts(3, seed=4)
  settings = S(temperature=0, max_tokens=8, logprobs=2)
  scheduler = E.Scheduler(engine, batch_prefill=True)
  for i, prompt in enumerate(prompts):
    scheduler.submit(i, prompt, settings)
  together = _run(scheduler, max_steps=8)
  for i, prompt in enumerate(prompts):
    alone = _alone(engine, prompt, settings)
    assert _tokens(together[i]) == _tokens(alone)
    np.testing.assert_allclose([e.logprob for e in together[i]], [e.logprob for e in alone], atol=1e-5)


def test_the_same_seed_gives_the_same_tokens_alone_and_in_a_crowd(lm):
  engine = E.Engine(lm, num_slots=8, max_length=32)
  prompt, settings = [5, 9, 2], S(temperature=1.0, seed=42, stream_index=1, max_tokens=16)
  alone = _tokens(_alone(engine, prompt, settings))
  rng = np.random.default_rng(2)
  scheduler = E.Scheduler(engine)
  for i, other in enumerate(_prompts(20, seed=3)):  # 20 others with random seeds and settings, before and after.
    scheduler.submit(i, other, S(temperature=float(rng.uniform(0.5, 1.5)), top_k=int(rng.integers(0, 20)),
                                 seed=int(rng.integers(1000)), max_tokens=int(rng.integers(1, 16))))
    if i == 10:
      scheduler.submit("mine", prompt, settings)
  assert _tokens(_run(scheduler)["mine"]) == alone
  assert _tokens(_alone(engine, prompt, settings)) == alone
  assert _tokens(_alone(engine, prompt, dataclasses.replace(settings, seed=43))) != alone
  assert _tokens(_alone(engine, prompt, dataclasses.replace(settings, stream_index=2))) != alone


@pytest.mark.parametrize("settings", [S(temperature=0, logprobs=5, max_tokens=12),
                                      S(temperature=1.0, seed=1, logprobs=3, max_tokens=12)])
def test_logprobs_equal_the_log_softmax_of_a_full_forward_pass(lm, engine, settings):
  prompt = [7, 3, 30, 12]
  events = _alone(engine, prompt, settings)
  tokens = prompt + _tokens(events)
  full = np.asarray(jax.nn.log_softmax(lm.logits(tokens)[0], axis=-1))  # [T, V]
  for step, event in enumerate(events):
    row = full[len(prompt) - 1 + step]
    np.testing.assert_allclose(event.logprob, row[event.token_id], atol=2e-5)
    ids = [i for i, _ in event.top_logprobs]
    values = [v for _, v in event.top_logprobs]
    assert len(ids) == settings.logprobs and values == sorted(values, reverse=True)
    np.testing.assert_array_equal(ids, np.argsort(-row, kind="stable")[:settings.logprobs])
    np.testing.assert_allclose(values, row[ids], atol=2e-5)
    if settings.temperature == 0:
      assert event.token_id == ids[0]


def test_penalties_follow_their_definitions_against_full_forward_logits(lm, engine):
  settings = S(temperature=0, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.9, max_tokens=12)
  prompt = [4, 4, 17]
  tokens = _tokens(_alone(engine, prompt, settings))
  full = lm.logits(prompt + tokens)[0]
  for step, token in enumerate(tokens):
    logits = full[len(prompt) - 1 + step].astype(np.float64)
    seen = set(prompt + tokens[:step])
    counts = np.bincount(tokens[:step], minlength=TINY.vocab_size)
    for i in seen:
      logits[i] = logits[i] / 1.3 if logits[i] > 0 else logits[i] * 1.3
    logits = logits - 0.4 * (counts > 0) - 0.9 * counts
    assert token == int(np.argmax(logits)), step
  assert tokens != _tokens(_alone(engine, prompt, S(temperature=0, max_tokens=12)))  # The penalties mattered.


def test_stop_sequences_and_max_tokens_end_a_request(engine):
  prompt = [1, 2, 3]
  free = _tokens(_alone(engine, prompt, S(temperature=1.0, seed=8, max_tokens=12)))
  stop = tuple(free[4:6])
  first = next(i for i in range(1, len(free)) if tuple(free[i - 1:i + 1]) == stop)  # Its first occurrence ends it.
  events = _alone(engine, prompt, S(temperature=1.0, seed=8, max_tokens=12, stop_token_ids=((60, 60, 60), stop)))
  assert _tokens(events) == free[:first + 1]  # The stop tokens are reported (the text layer strips them).
  assert events[-1].finish_reason == "stop" and all(e.finish_reason is None for e in events[:-1])
  one = _alone(engine, prompt, S(temperature=1.0, seed=8, max_tokens=12, stop_token_ids=((free[0],),)))
  assert _tokens(one) == free[:1] and one[0].finish_reason == "stop"
  three = _alone(engine, prompt, S(temperature=1.0, seed=8, max_tokens=3))
  assert _tokens(three) == free[:3] and three[-1].finish_reason == "length"


def test_cancel_frees_the_slot_before_the_next_step(lm):
  engine = E.Engine(lm, num_slots=1, max_length=32)
  scheduler = E.Scheduler(engine)
  scheduler.submit("long", [1, 2], S(temperature=0, max_tokens=20))
  scheduler.submit("next", [3, 4], S(temperature=0, max_tokens=5))
  assert [e.request_id for e in scheduler.step()] == ["long"]  # One slot: "next" waits.
  assert scheduler.num_waiting == 1
  scheduler.cancel("long")
  assert [e.request_id for e in scheduler.step()] == ["next"]
  rest = _run(scheduler)
  assert set(rest) == {"next"} and len(rest["next"]) == 4
  scheduler.submit("queued", [5], S(max_tokens=4))
  scheduler.cancel("queued")  # Still waiting: dropped from the queue.
  assert not scheduler.has_work()


def test_compile_count_stays_flat_after_warm_up(lm):
  engine = E.Engine(lm, num_slots=4, max_length=32)
  warm = E.Scheduler(engine)
  for i, length in enumerate((3, 12)):  # Prompt buckets 8 and 16.
    warm.submit(i, list(range(1, length + 1)), S(max_tokens=4, logprobs=2))
  _run(warm)
  warm.submit("w", [1], S(max_tokens=2))
  _run(warm, max_steps=4)
  before = E.trace_counts()
  scheduler = E.Scheduler(engine)
  for i, (prompt, settings) in enumerate(zip(_prompts(6, seed=9), MIXED)):
    scheduler.submit(i, prompt, dataclasses.replace(settings, logprobs=i % 3, stop_token_ids=((1, 2),) * (i % 2)))
  _run(scheduler)
  for i, prompt in enumerate(_prompts(5, seed=10)):
    scheduler.submit(i, prompt, S(temperature=0.5 * i, max_tokens=3 + i))
  _run(scheduler, max_steps=4)
  assert E.trace_counts() == before


def test_prompt_logprobs_score_each_token_given_the_ones_before(lm, engine):
  prompt = [4, 9, 33, 2, 8]
  logprobs = E.Scheduler(engine).prompt_logprobs(prompt)
  full = np.asarray(jax.nn.log_softmax(lm.logits(prompt)[0], axis=-1))
  assert logprobs[0] is None
  np.testing.assert_allclose(logprobs[1:], [full[t - 1, prompt[t]] for t in range(1, 5)], atol=2e-5)
  assert E.Scheduler(engine).prompt_logprobs([4]) == [None]


def test_score_is_the_log_softmax_at_the_targets(lm, engine):
  ids = np.array([[3, 5, 7, 9, 11], [0, 0, 2, 4, 6]])
  mask = np.array([[1] * 5, [0, 0, 1, 1, 1]], bool)
  targets = np.roll(ids, -1, axis=1)
  score = engine.score(ids, targets, mask)
  full = np.asarray(jax.nn.log_softmax(lm.logits(ids, mask), axis=-1))
  expected = np.take_along_axis(full, targets[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(score.logprob_BT, np.where(mask, expected, 0), atol=2e-5)
  np.testing.assert_array_equal(score.greedy_BT, mask & (full.argmax(-1) == targets))


# ----- Forward options. ------------------------------------------------------------------------------------------


def _zeroed(params, path, rows=None):
  """A copy of params with the array at `path` (a tuple of keys) zeroed (only `rows` of its first axes if given)."""
  params = jax.tree.map(np.array, params)
  node = params
  for key in path[:-1]:
    node = node[key]
  if rows is None:
    node[path[-1]] = np.zeros_like(node[path[-1]])
  else:
    node[path[-1]][rows] = 0.0
  return params


@pytest.mark.parametrize("ablation, zero", [
    (("mlp", 1), [(("h_1", "mlp", "c_proj", "kernel"), None), (("h_1", "mlp", "c_proj", "bias"), None)]),
    (("attn", 0), [(("h_0", "attn", "c_proj", "kernel"), None), (("h_0", "attn", "c_proj", "bias"), None)]),
    (("head", 1, 1), [(("h_1", "attn", "c_proj", "kernel"), 1)]),  # c_proj kernel (H, K, D): head 1's rows.
])
def test_ablations_equal_a_hand_zeroed_model(lm, engine, ablation, zero):
  ids = np.array([[3, 14, 15, 9, 26, 5]])
  params = lm.params
  for path, rows in zero:
    params = _zeroed(params, path, rows)
  expected = M.GPT(TINY).apply({"params": params}, ids)
  ablated = engine.forward(ids, ablations=[ablation]).logits_BTV
  np.testing.assert_allclose(ablated, expected, atol=1e-5)
  assert np.abs(ablated - engine.forward(ids).logits_BTV).max() > 1e-3


def test_hidden_states_and_attention(lm, engine):
  ids = np.array([[3, 14, 15, 9, 26], [0, 0, 1, 2, 3]])
  mask = np.array([[1] * 5, [0, 0, 1, 1, 1]], bool)
  out = engine.forward(ids, mask, hidden_states=True, attention=True)
  L, H, D = TINY.num_layers, TINY.num_heads, TINY.emb_dim
  assert out.hidden_NBTD.shape == (L + 1, 2, 5, D) and out.attention_NBHTT.shape == (L, 2, H, 5, 5)
  logits, final = M.GPT(TINY).apply({"params": lm.params}, ids, attention_mask_BL=mask, return_hidden=True)
  real = mask[..., None]  # Padding positions' outputs are never read.
  np.testing.assert_allclose(np.where(real, out.logits_BTV, 0), np.where(real, logits, 0), atol=1e-5)
  # Before ln_f: the last residual state through ln_f is what the head reads.
  ln_f = lm.params["ln_f"]
  last = out.hidden_NBTD[-1]
  normed = (last - last.mean(-1, keepdims=True)) / np.sqrt(last.var(-1, keepdims=True) + TINY.layer_norm_epsilon)
  final = np.where(real, final, 0)
  np.testing.assert_allclose(np.where(real, normed * ln_f["scale"] + ln_f["bias"], 0), final, atol=1e-4)
  final_only = engine.forward(ids, mask, logits=False, hidden_states="final").final_BTD
  np.testing.assert_allclose(np.where(real, final_only, 0), final, atol=1e-5)
  embeddings = lm.params["wte"]["embedding"][ids[0]] + lm.params["wpe"]["embedding"][np.arange(5)]
  np.testing.assert_allclose(out.hidden_NBTD[0, 0], embeddings, atol=1e-6)
  np.testing.assert_allclose(out.attention_NBHTT.sum(-1)[:, 0], 1.0, atol=1e-5)
  assert np.all(np.triu(out.attention_NBHTT[:, 0], k=1) == 0)


# ----- Bad requests. ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    (S(temperature=-1), r"temperature must be a finite number >= 0"),
    (S(top_k=-2), r"top_k must be an integer in \[0, vocab_size=61\]"),
    (S(top_p=0), r"top_p must be in \(0, 1\]"),
    (S(repetition_penalty=0), r"repetition_penalty must be a finite number > 0"),
    (S(presence_penalty=2.5), r"presence_penalty must be a number in \[-2, 2\]"),
    (S(frequency_penalty=-3), r"frequency_penalty must be a number in \[-2, 2\]"),
    (S(seed=1.5), r"seed must be an integer"),
    (S(stream_index=-1), r"stream_index must be an integer in \[0, 2\*\*31\)"),
    (S(max_tokens=0), r"max_tokens must be a positive integer"),
    (S(max_tokens=30), r"max_tokens: the prompt's 3 tokens \+ max_tokens=30 = 33 exceed the engine's max_length=32"),
    (S(logprobs=21), r"logprobs must be an integer in \[0, 20\]"),
    (S(stop_token_ids=((1,),) * 9), r"stop_token_ids must be a tuple of at most 8"),
    (S(stop_token_ids=((),)), r"stop_token_ids: each sequence must hold 1 to 16 token ids"),
    (S(stop_token_ids=((61,),)), r"stop_token_ids: each sequence .* in \[0, vocab_size=61\)"),
])
def test_bad_settings_raise_naming_the_field(engine, settings, message):
  scheduler = E.Scheduler(engine)
  with pytest.raises(ValueError, match=message):
    scheduler.submit("bad", [1, 2, 3], settings)
  assert not scheduler.has_work()


def test_bad_prompts_and_ids_are_named(engine):
  scheduler = E.Scheduler(engine)
  with pytest.raises(ValueError, match="prompt_ids is empty"):
    scheduler.submit("a", [], S())
  with pytest.raises(ValueError, match=r"Token id 61 is outside the model's vocabulary \[0, 61\)"):
    scheduler.submit("a", [1, 61], S())
  scheduler.submit("a", [1], S(max_tokens=2))
  with pytest.raises(ValueError, match="request_id 'a' is already queued or running"):
    scheduler.submit("a", [1], S())
  with pytest.raises(ValueError, match=r"ablations: layer 5 .* outside \[0, num_layers=2\)"):
    engine.forward([[1, 2]], ablations=[("mlp", 5)])
  with pytest.raises(ValueError, match="is not \\('head', layer, head\\)"):
    engine.forward([[1, 2]], ablations=[("neuron", 0, 1)])


def test_a_second_scheduler_is_refused_while_the_first_still_holds_requests(engine):
  settings = E.SamplingSettings(max_tokens=3)
  first = E.Scheduler(engine)
  first.submit("a", _prompts(1)[0], settings)
  with pytest.raises(RuntimeError, match=r"in use by another Scheduler that still has requests"):
    E.Scheduler(engine)
  _run(first)  # Done: its slots are free again, and the engine can serve someone else.
  assert len(_alone(engine, _prompts(1)[0], settings)) == 3


def test_small_cpu_programs_read_a_transposed_copy_of_the_kernels(lm):
  # (Its tokens are checked against full forward passes by the tests above, which decode through it.)
  engine = E.Engine(lm, num_slots=4, max_length=32)
  config, params = engine._layout(engine.num_slots)  # pylint: disable=protected-access
  assert config.weight_left and not engine.config.weight_left
  larger = engine._layout(65)  # pylint: disable=protected-access
  assert larger[0] is engine.config and larger[1] is engine.params  # Larger programs keep the usual layout.
  for name in ("c_attn", "c_proj"):
    kernel, usual = params["h_0"]["attn"][name]["kernel"], np.asarray(lm.params["h_0"]["attn"][name]["kernel"])
    k = 2 if name == "c_proj" else 1
    np.testing.assert_array_equal(kernel, np.transpose(usual, tuple(range(k, usual.ndim)) + tuple(range(k))))
  usual = np.asarray(lm.params["h_0"]["mlp"]["c_fc"]["kernel"])
  np.testing.assert_array_equal(params["h_0"]["mlp"]["c_fc"]["kernel"], usual.T)
  assert engine._layout(1)[1] is params  # Made once per parameter tree.  # pylint: disable=protected-access
