// gptjax explorer page: plain JavaScript, no dependencies, no build step. Talks to POST /v1/explore (schema in the
// README's "Explorer" section) and, to generate, to the server's POST /v1/completions with stream=true.
"use strict";

const $ = (sel) => document.querySelector(sel);
const DEBOUNCE_MS = 250;

const state = {
  text: "",
  reply: null,            // the last /v1/explore reply shown
  replyText: null,        // the text that reply is for
  sent: 0,                // sequence number of the last request sent
  shown: 0,               // sequence number of the reply on screen: older replies are dropped
  history: [""],          // undo stack of committed texts; its top is the current text
  future: [],             // redo stack
  view: "next",
  layer: 0, head: 0,
  lensPosition: -1,       // -1 = the last position
  ablations: new Map(),   // key -> {kind, layer[, head]}
  hover: null,            // hovered token index in the attention view
  attention: null,        // decoded Float32Array [layers, heads, T, T]
  modelId: null,
  generating: null,       // AbortController of a running generation
};
let timer = null;

// ---- float16 on the wire ----------------------------------------------------------------------------------------
const HALF = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h >> 15, exp = (h >> 10) & 31, frac = h & 1023;
    let v;
    if (exp === 0) v = frac * 2 ** -24;
    else if (exp === 31) v = frac ? NaN : Infinity;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    table[h] = sign ? -v : v;
  }
  return table;
})();

function decodeHalf(wire) {
  const bin = atob(wire.data);
  const out = new Float32Array(bin.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = HALF[bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)];
  return out;
}

// ---- helpers ----------------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
const pct = (p) => (p >= 0.1 ? (100 * p).toFixed(1) : (100 * p).toPrecision(2)) + "%";

function setStatus(message, isError = false) {
  const s = $("#status");
  s.textContent = message;
  s.classList.toggle("error", isError);
}

function barRow(display, prob, scale, { onclick = null, title = "", ablated = false } = {}) {
  const li = el("li", { class: onclick ? "clickable" : "", title },
    el("span", { class: "tok", text: display }),
    el("span", {}, el("div", { class: "bar" + (ablated ? " ablated" : ""), style: `width:${(100 * prob / scale).toFixed(2)}%` })),
    el("span", { class: "num", text: pct(prob) }));
  if (onclick) li.addEventListener("click", onclick);
  return li;
}

// ---- text, history, permalink -----------------------------------------------------------------------------------
function setText(text, { commit = true } = {}) {
  state.text = text;
  if ($("#text").value !== text) $("#text").value = text;
  if (commit) commitText();
  schedule(0);
}

function commitText() {
  const top = state.history[state.history.length - 1];
  if (state.text !== top) {
    state.history.push(state.text);
    state.future = [];
  }
  const url = new URL(window.location.href);
  if (state.text) url.searchParams.set("text", state.text); else url.searchParams.delete("text");
  window.history.replaceState(null, "", url);
  updateButtons();
}

function undo() {
  commitText();
  if (state.history.length < 2) return;
  state.future.push(state.history.pop());
  setText(state.history[state.history.length - 1], { commit: false });
  commitText();
}

function redo() {
  if (!state.future.length) return;
  state.history.push(state.future.pop());
  setText(state.history[state.history.length - 1], { commit: false });
  commitText();
}

function updateButtons() {
  $("#undo").disabled = state.history.length < 2 && state.text === state.history[state.history.length - 1];
  $("#redo").disabled = state.future.length === 0;
}

// ---- requests ---------------------------------------------------------------------------------------------------
function schedule(delay = DEBOUNCE_MS) {
  clearTimeout(timer);
  timer = setTimeout(refresh, delay);
}

function requestBody() {
  const body = { text: state.text, top_k: Math.max(1, Math.min(100, parseInt($("#top-k").value, 10) || 10)) };
  if (state.view === "attention") body.attention = true;
  if (state.view === "lens") body.lens_position = state.lensPosition;
  if (state.view === "ablation" && state.ablations.size) body.ablations = [...state.ablations.values()];
  return body;
}

async function refresh() {
  commitText();
  if (!state.text) {
    state.reply = null;
    render();
    setStatus("Type a text to start.");
    return;
  }
  const seq = ++state.sent;
  const text = state.text;
  const body = requestBody();
  setStatus("…");
  let reply;
  try {
    const response = await fetch("/v1/explore", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    reply = await response.json();
    if (!response.ok) {
      if (seq > state.shown) setStatus(`${reply.error?.param ?? "error"}: ${reply.error?.message}`, true);
      return;
    }
  } catch (e) {
    if (seq > state.sent - 1) setStatus(`request failed: ${e}`, true);
    return;
  }
  if (seq <= state.shown) return;  // a newer reply is already on screen: this one is stale
  state.shown = seq;
  state.reply = reply;
  state.replyText = text;
  state.attention = reply.attention ? decodeHalf(reply.attention) : null;
  setStatus(`${reply.tokens.length} tokens`);
  render();
}

// ---- rendering --------------------------------------------------------------------------------------------------
function render() {
  for (const view of ["next", "sampling", "tokens", "attention", "lens", "ablation"]) {
    const node = $(`#view-${view}`);
    node.classList.toggle("active", view === state.view);
  }
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.view === state.view));
  const r = state.reply;
  if (!r) {
    for (const id of ["#next", "#sampling", "#token-ranks", "#attention-tokens", "#lens", "#ablation"]) $(id).replaceChildren();
    return;
  }
  renderNext(r);
  renderSampling(r);
  renderTokens(r);
  renderAttention(r);
  renderLens(r);
  renderAblation(r);
}

function renderNext(r) {
  const scale = r.next[0].prob;
  $("#next").replaceChildren(...r.next.map((c) => barRow(c.display, c.prob, scale, {
    title: `id ${c.id}, logprob ${c.logprob.toFixed(3)}`,
    onclick: () => setText(state.text + (c.append ?? c.text)),
  })));
}

// Temperature, then top-k (ties with the k-th kept), then top-p (a token is kept iff the mass before it is below
// top_p), renormalised over the shown candidates: the order gptjax's sampler applies them in.
function sampling(probs, temperature, topK, topP) {
  if (temperature === 0) return probs.map((_, i) => (i === 0 ? 1 : 0));
  const logits = probs.map((p) => Math.log(Math.max(p, 1e-300)) / temperature);
  const max = Math.max(...logits);
  let q = logits.map((l) => Math.exp(l - max));
  const norm = (v) => { const s = v.reduce((a, b) => a + b, 0); return v.map((x) => x / s); };
  q = norm(q);
  if (topK > 0) {
    const kth = [...q].sort((a, b) => b - a)[Math.min(topK, q.length) - 1];
    q = norm(q.map((x) => (x >= kth ? x : 0)));
  }
  if (topP < 1) {
    let before = 0;
    const keep = q.map(() => false);
    [...q.keys()].sort((a, b) => q[b] - q[a]).forEach((i) => { keep[i] = before < topP; before += q[i]; });
    q = norm(q.map((x, i) => (keep[i] ? x : 0)));
  }
  return q;
}

function samplingSettings() {
  return {
    temperature: parseFloat($("#temperature").value),
    top_k: parseInt($("#sample-top-k").value, 10) || 0,
    top_p: parseFloat($("#top-p").value),
  };
}

function renderSampling(r) {
  const s = samplingSettings();
  $("#temperature-out").textContent = s.temperature;
  $("#top-p-out").textContent = s.top_p;
  const q = sampling(r.next.map((c) => c.prob), s.temperature, s.top_k, s.top_p);
  const scale = Math.max(...q) || 1;
  $("#sampling").replaceChildren(...r.next.map((c, i) => barRow(c.display, q[i], scale, {
    title: `model ${pct(c.prob)} → sampler ${pct(q[i])}`,
    onclick: () => setText(state.text + (c.append ?? c.text)),
  })));
}

function rankClass(rank) {
  if (rank === null) return "rnone";
  return rank <= 10 ? "r10" : rank <= 100 ? "r100" : rank <= 1000 ? "r1000" : "rmore";
}

function renderTokens(r) {
  // A token that holds a newline also breaks the line, so the text keeps its shape.
  const spans = r.tokens.map((t, i) => el("span", {
    class: rankClass(t.rank) + (i === lensIndex(r) ? " selected" : ""),
    title: t.rank === null ? `${t.display} (id ${t.id}): first token, no prediction`
      : `${t.display} (id ${t.id}): rank ${t.rank}, probability ${pct(t.prob)}\nthe model expected: ` +
        r.positions[i - 1].top.slice(0, 3).map((c) => `${c.display} ${pct(c.prob)}`).join(", "),
    text: t.display,
    onclick: () => { state.lensPosition = i; state.view = "lens"; render(); schedule(0); },
  }));
  $("#token-ranks").replaceChildren(...spans.flatMap((span, i) => (r.tokens[i].text.includes("\n") ? [span, el("br")] : [span])));
}

function fillSelect(select, count, label, value) {
  if (select.options.length !== count) {
    select.replaceChildren(...Array.from({ length: count }, (_, i) => el("option", { value: i, text: `${label} ${i}` })));
  }
  select.value = value;
}

function attentionRow(r, layer, head, query) {
  const T = r.tokens.length, H = r.attention.heads.length;
  const li = r.attention.layers.indexOf(layer), hi = r.attention.heads.indexOf(head);
  const start = ((li * H + hi) * T + query) * T;
  return state.attention.subarray(start, start + T);
}

function renderAttention(r) {
  fillSelect($("#layer"), r.model.num_layers, "layer", state.layer);
  fillSelect($("#head"), r.model.num_heads, "head", state.head);
  const T = r.tokens.length;
  const tokens = r.tokens.map((t, i) => el("span", {
    text: t.display, "data-i": i,
    onmouseenter: () => { state.hover = i; paintAttentionTokens(r); },
    onmouseleave: () => { state.hover = null; paintAttentionTokens(r); },
  }));
  $("#attention-tokens").replaceChildren(...tokens);
  if (!state.attention) {
    $("#grid").replaceChildren(el("p", { class: "muted", text: "Loading attention…" }));
    return;
  }
  paintAttentionTokens(r);
  paintHeatmap($("#heatmap"), r, state.layer, state.head, 360);
  $("#heatmap").onmousemove = (e) => {
    const box = $("#heatmap").getBoundingClientRect();
    const q = Math.floor((e.clientY - box.top) / box.height * T), k = Math.floor((e.clientX - box.left) / box.width * T);
    if (q < 0 || k < 0 || q >= T || k >= T) return;
    const w = attentionRow(r, state.layer, state.head, q)[k];
    $("#heatmap-cell").textContent = `query ${q} ${r.tokens[q].display} → key ${k} ${r.tokens[k].display}: ${w.toFixed(3)}`;
  };
  const grid = $("#grid");
  grid.style.gridTemplateColumns = `3em repeat(${r.model.num_heads}, 44px)`;
  const cells = [];
  for (let layer = 0; layer < r.model.num_layers; layer++) {
    cells.push(el("span", { class: "label", text: `L${layer}` }));
    for (let head = 0; head < r.model.num_heads; head++) {
      const c = el("canvas", { width: T, height: T, title: `layer ${layer}, head ${head}`,
        class: layer === state.layer && head === state.head ? "selected" : "" });
      c.addEventListener("click", () => { state.layer = layer; state.head = head; renderAttention(r); });
      paintHeatmap(c, r, layer, head, T);
      cells.push(c);
    }
  }
  grid.replaceChildren(...cells);
}

function paintAttentionTokens(r) {
  const spans = $("#attention-tokens").children;
  for (let j = 0; j < spans.length; j++) {
    spans[j].style.background = "";
    spans[j].style.borderBottomColor = "transparent";
  }
  if (state.hover === null || !state.attention) return;
  const i = state.hover, T = r.tokens.length;
  const row = attentionRow(r, state.layer, state.head, i);  // what token i attends to
  for (let j = 0; j < T; j++) {
    if (j <= i) spans[j].style.background = `rgba(47, 111, 223, ${row[j].toFixed(3)})`;
    if (j >= i) {  // how much token j attends to token i
      const w = attentionRow(r, state.layer, state.head, j)[i];
      spans[j].style.borderBottomColor = `rgba(217, 130, 43, ${w.toFixed(3)})`;
    }
  }
  spans[i].classList.add("selected");
  for (let j = 0; j < T; j++) if (j !== i) spans[j].classList.remove("selected");
}

function paintHeatmap(canvas, r, layer, head, size) {
  const T = r.tokens.length;
  canvas.width = size; canvas.height = size;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(T, T);
  for (let q = 0; q < T; q++) {
    const row = attentionRow(r, layer, head, q);
    for (let k = 0; k < T; k++) {
      const w = Math.sqrt(Math.max(0, row[k]));  // sqrt: small weights stay visible
      const o = 4 * (q * T + k);
      image.data[o] = 255 - Math.round(208 * w); image.data[o + 1] = 255 - Math.round(144 * w);
      image.data[o + 2] = 255 - Math.round(32 * w); image.data[o + 3] = 255;
    }
  }
  if (size === T) { ctx.putImageData(image, 0, 0); return; }
  const tmp = el("canvas", { width: T, height: T });
  tmp.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, 0, 0, size, size);
}

function lensIndex(r) {
  const T = r.tokens.length;
  return ((state.lensPosition % T) + T) % T;
}

function renderLens(r) {
  const select = $("#lens-position");
  const T = r.tokens.length;
  select.replaceChildren(...r.tokens.map((t, i) => el("option", { value: i, text: `${i}: ${t.display}` })));
  select.value = lensIndex(r);
  if (!r.lens) {
    $("#lens").replaceChildren(el("p", { class: "muted", text: "Loading the logit lens…" }));
    return;
  }
  const p = r.lens.position;
  const target = p + 1 < T ? r.tokens[p + 1] : null;
  const head = el("tr", {}, el("th", { text: "layer" }),
    ...r.lens.layers[0].top.map((_, i) => el("th", { text: `#${i + 1}` })),
    el("th", { text: target ? `actual next: ${target.display}` : "actual next: —" }));
  const rows = r.lens.layers.map((layer) => el("tr", {}, el("th", { text: layer.name }),
    ...layer.top.map((c) => el("td", {
      class: "cand", title: `${pct(c.prob)} (id ${c.id})`,
      style: `background: rgba(47, 111, 223, ${Math.min(0.85, c.prob).toFixed(3)})`,
    }, c.display, el("small", { class: "muted", text: ` ${pct(c.prob)}` }))),
    el("td", { text: layer.target ? `rank ${layer.target.rank}, ${pct(layer.target.prob)}` : "" })));
  $("#lens").replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function ablationKey(a) { return a.kind === "head" ? `head:${a.layer}:${a.head}` : `${a.kind}:${a.layer}`; }

function renderAblationSwitches(model) {
  const box = $("#ablation-switches");
  if (box.dataset.shape === `${model.num_layers}x${model.num_heads}`) return;
  box.dataset.shape = `${model.num_layers}x${model.num_heads}`;
  const toggle = (a) => {
    const input = el("input", { type: "checkbox", "data-key": ablationKey(a) });
    input.addEventListener("change", () => {
      if (input.checked) state.ablations.set(ablationKey(a), a); else state.ablations.delete(ablationKey(a));
      schedule(0);
    });
    return input;
  };
  const rows = [];
  for (let layer = 0; layer < model.num_layers; layer++) {
    const cells = [el("th", { text: `layer ${layer}` }),
      el("td", {}, el("label", {}, toggle({ kind: "attn", layer }), " attention")),
      el("td", {}, el("label", {}, toggle({ kind: "mlp", layer }), " MLP"))];
    for (let head = 0; head < model.num_heads; head++) {
      cells.push(el("td", {}, el("label", { title: `layer ${layer}, head ${head}` }, toggle({ kind: "head", layer, head }), ` h${head}`)));
    }
    rows.push(el("tr", {}, ...cells));
  }
  box.replaceChildren(el("table", {}, el("tbody", {}, ...rows)));
}

function renderAblation(r) {
  renderAblationSwitches(r.model);
  const out = $("#ablation");
  if (!r.ablation) {
    out.replaceChildren(el("p", { class: "muted", text: state.ablations.size ? "Loading…" : "Nothing switched off: tick a box above." }));
    return;
  }
  const a = r.ablation;
  const off = a.ablations.map((x) => (x.kind === "head" ? `layer ${x.layer} head ${x.head}` : `layer ${x.layer} ${x.kind === "attn" ? "attention" : "MLP"}`));
  const rows = a.tokens.map((t) => el("tr", {},
    el("td", { class: "tok", text: t.display }),
    el("td", { text: pct(t.prob) }),
    el("td", { text: pct(t.ablated_prob) }),
    el("td", { class: t.delta >= 0 ? "delta-up" : "delta-down", text: (t.delta >= 0 ? "+" : "") + pct(t.delta) })));
  out.replaceChildren(
    el("p", { text: `Off: ${off.join(", ")}. KL(intact ‖ ablated) = ${a.kl.toFixed(4)} nats.` }),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "token" }), el("th", { text: "intact" }),
      el("th", { text: "ablated" }), el("th", { text: "change" }))), el("tbody", {}, ...rows)));
}

// ---- generation through /v1/completions (stream=true) -----------------------------------------------------------
async function generate() {
  if (!state.modelId) { $("#gen-status").textContent = "no /v1/completions on this server"; return; }
  const s = samplingSettings();
  const controller = new AbortController();
  state.generating = controller;
  $("#generate").disabled = true; $("#stop").disabled = false;
  $("#gen-status").textContent = "generating…";
  const body = { model: state.modelId, prompt: state.text, max_tokens: parseInt($("#gen-n").value, 10) || 20,
    temperature: s.temperature, top_p: s.top_p, stream: true };
  if (s.top_k > 0) body.top_k = s.top_k;
  try {
    const response = await fetch("/v1/completions", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error(err.error?.message ?? response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          const piece = chunk.choices?.[0]?.text ?? "";
          if (piece) { state.text += piece; $("#text").value = state.text; }
        }
      }
    }
    $("#gen-status").textContent = "done";
  } catch (e) {
    $("#gen-status").textContent = e.name === "AbortError" ? "stopped" : `failed: ${e.message}`;
  } finally {
    state.generating = null;
    $("#generate").disabled = false; $("#stop").disabled = true;
    setText(state.text);
  }
}

// ---- export: the current view as one self-contained HTML file ---------------------------------------------------
function exportView() {
  const view = $(`#view-${state.view}`).cloneNode(true);
  // Canvases do not survive cloning: carry their pixels as images.
  const originals = $(`#view-${state.view}`).querySelectorAll("canvas");
  view.querySelectorAll("canvas").forEach((c, i) => {
    const img = document.createElement("img");
    img.src = originals[i].toDataURL("image/png");
    img.width = originals[i].clientWidth || originals[i].width;
    img.height = originals[i].clientHeight || originals[i].height;
    c.replaceWith(img);
  });
  view.querySelectorAll("button, input, select").forEach((n) => {
    if (n.tagName === "SELECT") n.replaceWith(document.createTextNode(n.selectedOptions[0]?.textContent ?? ""));
    else if (n.tagName === "INPUT" && n.type === "checkbox") n.replaceWith(document.createTextNode(n.checked ? "☒" : "☐"));
    else if (n.tagName === "INPUT") n.replaceWith(document.createTextNode(n.value));
    else n.remove();
  });
  let css = "";
  for (const sheet of document.styleSheets) {
    try { for (const rule of sheet.cssRules) css += rule.cssText + "\n"; } catch (e) { /* not ours */ }
  }
  const escape = (s) => s.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[c]));
  const html = `<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>gptjax explorer: ${state.view}</title>` +
    `<style>${css}</style></head><body><main><h1>gptjax explorer: ${escape($(`#tabs button[data-view=${state.view}]`).textContent)}</h1>` +
    `<pre class="tok">${escape(state.replyText ?? state.text)}</pre>${view.outerHTML}</main></body></html>\n`;
  const a = el("a", { href: URL.createObjectURL(new Blob([html], { type: "text/html" })), download: `explorer-${state.view}.html` });
  document.body.append(a);
  a.click();
  a.remove();
  return html;
}

// ---- start ------------------------------------------------------------------------------------------------------
function start() {
  $("#text").addEventListener("input", () => { state.text = $("#text").value; updateButtons(); schedule(); });
  $("#undo").addEventListener("click", undo);
  $("#redo").addEventListener("click", redo);
  $("#top-k").addEventListener("change", () => schedule(0));
  $("#permalink").addEventListener("click", async () => {
    commitText();
    try { await navigator.clipboard.writeText(window.location.href); setStatus("link copied"); } catch (e) { setStatus(window.location.href); }
  });
  $("#export").addEventListener("click", exportView);
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => { state.view = b.dataset.view; render(); schedule(0); });
  }
  for (const id of ["#temperature", "#sample-top-k", "#top-p"]) {
    $(id).addEventListener("input", () => state.reply && renderSampling(state.reply));
  }
  $("#generate").addEventListener("click", generate);
  $("#stop").addEventListener("click", () => state.generating?.abort());
  $("#layer").addEventListener("change", () => { state.layer = +$("#layer").value; state.reply && renderAttention(state.reply); });
  $("#head").addEventListener("change", () => { state.head = +$("#head").value; state.reply && renderAttention(state.reply); });
  $("#lens-position").addEventListener("change", () => { state.lensPosition = +$("#lens-position").value; schedule(0); });
  $("#ablation-clear").addEventListener("click", () => {
    state.ablations.clear();
    document.querySelectorAll("#ablation-switches input").forEach((i) => { i.checked = false; });
    schedule(0);
  });
  document.addEventListener("keydown", (e) => {
    if (e.target === $("#text")) return;
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); }
  });
  fetch("/v1/models").then((r) => (r.ok ? r.json() : null)).then((m) => {
    state.modelId = m?.data?.[0]?.id ?? null;
    $("#model-info").textContent = state.modelId ? `model: ${state.modelId}` : "";
  }).catch(() => {});
  const text = new URL(window.location.href).searchParams.get("text") ?? "";
  state.history = [text];
  setText(text, { commit: false });
  updateButtons();
}

start();
