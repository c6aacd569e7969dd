"""The explorer page in real headless Chromium, against a real `python -m gptjax.serve` on 127.0.0.1.

Needs Debian's `chromium` (`apt-get install -y chromium`; .ci/run does it) and Playwright for Python, which drives
that binary: Playwright's own browser download is never used. Run with `pytest -m browser`.
Set EXPLORER_SCREENSHOTS=<folder> to keep the screenshots.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.request

import pytest

from gptjax.tokenizer import train_bpe

from tests import tiny_lm

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
# Waits for the page, not speed limits: the shared CPU may take a while to compile a program.
WAIT_MS = 180_000
ROOT = pathlib.Path(__file__).parents[1]
CORPUS = ["The quick brown fox jumps over the lazy dog. Hello world, hello there!\n"] * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  if not pathlib.Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
  tokenizer = train_bpe(CORPUS, 300)
  config = dataclasses.replace(tiny_lm.TINY, vocab_size=tokenizer.vocab_size, block_size=64, num_layers=2,
                               num_heads=4, emb_dim=32)
  folder = tmp_path_factory.mktemp("model") / "tiny-explorer"
  tiny_lm.random_lm(config, tokenizer, scale=8.0).save(folder)
  port_file = tmp_path_factory.mktemp("port") / "port"
  log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # the tests' 8 fake devices are not the server's business
  process = subprocess.Popen(
      [sys.executable, "-m", "gptjax.serve", f"--model={folder}", "--host=127.0.0.1", "--port=0",
       f"--port_file={port_file}", "--num_slots=2"], env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    base = _wait_until_healthy(process, port_file, log)
    yield base
  finally:
    process.terminate()
    process.wait()
    log.close()


def _wait_until_healthy(process, port_file, log) -> str:
  """The server's base URL once /health says ok; fails with the server's log if it exits first."""
  import time  # pylint: disable=g-import-not-at-top
  while True:
    if process.poll() is not None:
      log.seek(0)
      pytest.fail(f"python -m gptjax.serve exited with {process.returncode}:\n{log.read()[-4000:]}")
    if port_file.exists() and port_file.read_text().strip():
      base = f"http://127.0.0.1:{int(port_file.read_text())}"
      try:
        with urllib.request.urlopen(base + "/health") as response:
          if response.status == 200:
            return base
      except OSError:
        pass
    time.sleep(0.5)


@pytest.fixture(scope="module")
def browser():
  playwright_api = pytest.importorskip("playwright.sync_api")
  with playwright_api.sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture
def page(browser):
  context = browser.new_context(viewport={"width": 1200, "height": 1000}, accept_downloads=True)
  page = context.new_page()
  page.set_default_timeout(WAIT_MS)
  problems = []
  page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning")
          else None)
  page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
  page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
  page.problems = problems
  yield page
  context.close()


def explore(base, **body):
  request = urllib.request.Request(base + "/v1/explore", data=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request) as response:
    return json.loads(response.read())


def screenshot(page, tmp_path, name):
  path = tmp_path / f"{name}.png"
  page.screenshot(path=path, full_page=True)
  assert path.stat().st_size > 10_000  # a real picture, not a blank page
  if os.environ.get("EXPLORER_SCREENSHOTS"):
    os.makedirs(os.environ["EXPLORER_SCREENSHOTS"], exist_ok=True)
    shutil.copy(path, os.environ["EXPLORER_SCREENSHOTS"])


def test_type_click_undo_and_attention(server, page, tmp_path):
  requests = []
  page.on("request", lambda r: requests.append(r.url))
  page.goto(server + "/explorer")
  page.fill("#text", "Hello wor")
  page.wait_for_function("document.querySelectorAll('#next li').length === 10")
  page.wait_for_function("document.querySelector('#status').textContent.includes('tokens')")
  expected = explore(server, text="Hello wor", top_k=10)["next"]
  rows = page.locator("#next li")
  for i, candidate in enumerate(expected):
    assert rows.nth(i).locator(".tok").text_content() == candidate["display"]
    shown = rows.nth(i).locator(".num").text_content()
    assert shown.endswith("%") and abs(float(shown[:-1]) - 100 * candidate["prob"]) <= 0.051, shown
  widths = [float(rows.nth(i).locator(".bar").evaluate("b => b.getBoundingClientRect().width")) for i in range(10)]
  assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1] > 0
  screenshot(page, tmp_path, "next")

  # Click the first candidate: the text grows by exactly what it appends, and the list follows the new text.
  rows.nth(0).click()
  grown = "Hello wor" + expected[0]["append"]
  page.wait_for_function(f"document.querySelector('#text').value === {json.dumps(grown)}")
  assert "text=" in page.url
  following = explore(server, text=grown, top_k=10)["next"]
  page.wait_for_function(f"document.querySelector('#next li .tok').textContent === {json.dumps(following[0]['display'])}")
  page.click("#undo")
  page.wait_for_function("document.querySelector('#text').value === 'Hello wor'")
  page.click("#redo")
  page.wait_for_function(f"document.querySelector('#text').value === {json.dumps(grown)}")
  page.click("#undo")
  page.wait_for_function("document.querySelector('#text').value === 'Hello wor'")

  # Attention: the layers x heads grid, then switch heads.
  page.click("#tabs button[data-view=attention]")
  page.wait_for_function("document.querySelectorAll('#grid canvas').length === 8")
  assert page.locator("#grid canvas.selected").get_attribute("title") == "layer 0, head 0"
  page.select_option("#head", "2")
  page.wait_for_function("document.querySelector('#grid canvas.selected').title === 'layer 0, head 2'")
  page.locator("#grid canvas").nth(5).click()  # layer 1, head 1
  assert page.locator("#head").input_value() == "1" and page.locator("#layer").input_value() == "1"
  tokens = page.locator("#attention-tokens span")
  tokens.nth(tokens.count() - 1).hover()
  # The last token attends to every token (itself included): each is shaded by its weight.
  shaded = page.eval_on_selector_all("#attention-tokens span", "s => s.filter(x => x.style.background).length")
  assert shaded == tokens.count()
  assert "does not show" in page.locator(".caveat").text_content()
  screenshot(page, tmp_path, "attention")
  assert not [u for u in requests if not u.startswith(server) and not u.startswith("data:")], requests
  assert not page.problems, page.problems


def test_token_ranks_lens_ablation_sampling_and_export(server, page, tmp_path):
  page.goto(server + "/explorer?text=" + urllib.request.quote("The quick brown fox"))
  assert page.locator("#text").input_value() == "The quick brown fox"  # the permalink
  page.wait_for_function("document.querySelectorAll('#next li').length === 10")

  # Typing is debounced (fewer requests than keys) and the list ends up describing the final text.
  explores = []
  page.on("request", lambda r: explores.append(r) if r.url.endswith("/v1/explore") else None)
  page.focus("#text")
  page.keyboard.press("End")
  page.keyboard.type(" jumps", delay=10)
  final = explore(server, text="The quick brown fox jumps")["next"]
  page.wait_for_function("document.querySelector('#text').value === 'The quick brown fox jumps'")
  page.wait_for_function(
      "() => [...document.querySelectorAll('#next li .tok')].map(n => n.textContent).join('|') === "
      + json.dumps("|".join(c["display"] for c in final)))
  assert 1 <= len(explores) < len(" jumps"), [r.post_data for r in explores]
  page.fill("#text", "The quick brown fox")
  reply = explore(server, text="The quick brown fox")
  page.wait_for_function(f"document.querySelector('#status').textContent === '{len(reply['tokens'])} tokens'")

  page.click("#tabs button[data-view=tokens]")
  spans = page.locator("#token-ranks span")
  assert spans.count() == len(reply["tokens"])
  for i, token in enumerate(reply["tokens"]):
    rank = token["rank"]
    expected = "rnone" if rank is None else "r10" if rank <= 10 else "r100" if rank <= 100 else \
        "r1000" if rank <= 1000 else "rmore"
    assert expected in spans.nth(i).get_attribute("class")
    assert (str(rank) if rank else "first token") in spans.nth(i).get_attribute("title")

  page.click("#tabs button[data-view=lens]")
  page.wait_for_function("document.querySelectorAll('#lens tbody tr').length === 3")  # embeddings + 2 blocks
  page.select_option("#lens-position", "1")
  page.wait_for_function("document.querySelector('#lens th:last-child').textContent.startsWith('actual next')"
                         " && !document.querySelector('#lens th:last-child').textContent.endsWith('—')")

  page.click("#tabs button[data-view=ablation]")
  page.locator("#ablation-switches input[data-key='head:1:0']").check()
  page.wait_for_function("document.querySelector('#ablation table') !== null")
  assert "layer 1 head 0" in page.locator("#ablation p").text_content()

  page.click("#tabs button[data-view=sampling]")
  page.fill("#temperature", "0")
  page.dispatch_event("#temperature", "input")
  bars = page.locator("#sampling li .num")
  assert bars.nth(0).text_content() == "100.0%" and bars.nth(1).text_content() == "0.0%"
  # Generate at temperature 0 (greedy) through /v1/completions: the first new token is the top candidate.
  page.fill("#gen-n", "5")
  before = page.locator("#text").input_value()
  first = explore(server, text=before)["next"][0]["append"]
  page.click("#generate")
  page.wait_for_function("document.querySelector('#gen-status').textContent === 'done'")
  after = page.locator("#text").input_value()
  assert after.startswith(before + first) and len(after) > len(before + first)
  screenshot(page, tmp_path, "sampling")

  page.click("#tabs button[data-view=attention]")
  page.wait_for_function("document.querySelectorAll('#grid canvas').length === 8")
  with page.expect_download() as download:
    page.click("#export")
  html = pathlib.Path(download.value.path()).read_text()
  assert html.startswith("<!doctype html>") and "<style>" in html and "<script" not in html
  assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
  assert not page.problems, page.problems
