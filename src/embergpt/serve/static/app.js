// embergpt web UI: plain JavaScript, no build step, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  tokens: [], // {id, text, kind: "prompt" | "generated"}
  attention: null, // Map "layer:head" -> ragged rows (row i: weights over positions 0..i)
  averages: new Map(), // layer -> head-averaged rows
  selected: null, // token index shown (hover)
  pinned: null, // token index pinned (click)
  controller: null,
  metrics: null,
  retryTimer: null,
};

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function formatCount(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + "B";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return String(n);
}

function visible(text) {
  // Whitespace made visible for chips and tooltips.
  return text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

function isSpecial(text) {
  return /^<\|[^|]*\|>$/.test(text) || text === "<unk>";
}

function setupCanvas(canvas) {
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(rect.width * dpr));
  const h = Math.max(1, Math.round(rect.height * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, width: rect.width, height: rect.height };
}

// A perceptual dark-to-bright ramp (close to matplotlib's "magma"), matching the ember palette.
const RAMP = [
  [0.0, [252, 253, 191]], [0.25, [254, 176, 120]], [0.5, [241, 96, 93]],
  [0.75, [140, 41, 129]], [1.0, [0, 0, 4]],
];
function rampColor(v) {
  // v in [0, 1]: 0 -> light, 1 -> dark (weights read as ink on paper)
  v = Math.min(1, Math.max(0, v));
  for (let i = 1; i < RAMP.length; i++) {
    if (v <= RAMP[i][0]) {
      const [a, ca] = RAMP[i - 1];
      const [b, cb] = RAMP[i];
      const t = (v - a) / (b - a);
      return ca.map((c, k) => Math.round(c + (cb[k] - c) * t));
    }
  }
  return RAMP[RAMP.length - 1][1];
}

// ---------------------------------------------------------------- errors

function showError(message, kind = "error") {
  const box = $("error");
  box.classList.toggle("warn", kind === "warn");
  $("error-text").textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  if (state.retryTimer) {
    clearInterval(state.retryTimer);
    state.retryTimer = null;
  }
}

function describeError(err, status) {
  const e = err || {};
  switch (e.error) {
    case "rate_limited":
      return `Rate limit reached: too many requests from this address. Try again in ${Math.ceil(e.retry_after_seconds || 1)} s.`;
    case "prompt_too_large":
      return `The prompt is too large: ${e.actual_bytes} bytes, the limit is ${e.max_bytes} bytes.`;
    case "max_tokens_out_of_range":
      return `Max tokens must be between 1 and ${e.max_allowed} (asked for ${e.requested}).`;
    case "unencodable_prompt":
      return `This model's tokenizer cannot encode the prompt. ${e.message || ""}`;
    case "context_length_exceeded":
      return `The prompt (${e.prompt_tokens} tokens) plus ${e.max_tokens} new tokens exceed the model's context of ` +
        `${e.sequence_len} tokens: ask for at most ${e.max_tokens_allowed} new tokens or shorten the prompt.`;
    case "attention_too_large":
      return `Attention weights are returned for at most ${e.max_tokens_total} tokens in all ` +
        `(this request may reach ${e.prompt_tokens + e.max_tokens}): lower max tokens or turn off "return weights".`;
    case "invalid_request":
      return "Invalid request: " + (e.details || []).map((d) => `${(d.loc || []).slice(1).join(".")} ${d.msg}`).join("; ");
    case "server_busy":
      return "The server is busy with other requests; try again in a moment.";
    case "body_too_large":
      return `The request is too large (over ${e.max_bytes} bytes).`;
    default:
      return e.message || `The server answered ${status || "with an error"}${e.error ? " (" + e.error + ")" : ""}.`;
  }
}

function startRetryCountdown(seconds) {
  const button = $("generate");
  let left = Math.ceil(seconds);
  button.disabled = true;
  button.textContent = `Wait ${left} s`;
  state.retryTimer = setInterval(() => {
    left -= 1;
    if (left <= 0) {
      clearInterval(state.retryTimer);
      state.retryTimer = null;
      button.disabled = false;
      button.textContent = "Generate";
      $("error").hidden = true;
    } else {
      button.textContent = `Wait ${left} s`;
    }
  }, 1000);
}

// ---------------------------------------------------------------- model info, health, metrics

async function loadInfo() {
  let info;
  try {
    const r = await fetch("/api/info");
    info = await r.json();
    if (!r.ok) throw new Error(describeError(info, r.status));
  } catch (e) {
    showError("Cannot load the model description: " + e.message);
    return;
  }
  state.info = info;
  const m = info.model;
  const t = info.tokenizer;
  const summary = $("model-summary");
  summary.replaceChildren(
    el("b", { text: info.model_id }),
    ` · ${m.kind} · ${formatCount(m.num_params)} parameters · ${m.n_layer} layers × ${m.n_head} heads · ` +
      `context ${m.sequence_len} · ${t.kind} tokenizer (${t.vocab_size})`,
  );
  const ckpt = info.checkpoint;
  const rows = [
    ["model", `${m.kind} · ${m.num_params.toLocaleString()} params`],
    ["layers", `${m.n_layer} × ${m.n_head} heads (${m.n_kv_head} kv)`],
    ["width", `d ${m.n_embd} · context ${m.sequence_len}`],
    ["tokenizer", `${t.kind} · ${t.vocab_size} ids`],
    ["vocabulary", `model ${m.vocab_size} · ${info.vocab_match ? "matches" : "differs"}`, info.vocab_match ? "" : "warn", info.vocab_note],
    ["chat", `${info.chat_template} template`],
    ["checkpoint", (ckpt.basename || "none") + (ckpt.step != null ? ` · step ${ckpt.step}` : "")],
    ["device", `${info.device} · ${info.dtype}`],
  ];
  $("model-info").replaceChildren(
    ...rows.flatMap(([k, v, cls, title]) => [
      el("dt", { text: k }),
      el("dd", { text: String(v), class: cls || "", title: title || String(v) }),
    ]),
  );
  $("max-tokens").max = info.limits.max_output_tokens;
  fillSelect($("layer-select"), [...Array(m.n_layer).keys()].map((i) => [String(i), `${i}`]));
  fillSelect($("head-select"), [["avg", "average of heads"], ...[...Array(m.n_head).keys()].map((i) => [String(i), `${i}`])]);
}

function fillSelect(select, options) {
  select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
}

async function pollHealth() {
  const dot = $("status");
  try {
    const r = await fetch("/api/health");
    const h = await r.json();
    dot.className = "status " + (r.ok && h.status === "ok" ? "ok" : "down");
    const s = h.scheduler || {};
    dot.title = `server ok · up ${Math.round(h.uptime_seconds)} s · ${s.active || 0} running, ${s.queued || 0} queued`;
  } catch (e) {
    dot.className = "status down";
    dot.title = "server unreachable";
  }
}

async function loadMetrics() {
  try {
    const r = await fetch("/api/metrics");
    state.metrics = await r.json();
  } catch (e) {
    state.metrics = { points: [] };
  }
  drawLoss();
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function drawLoss() {
  const points = (state.metrics && state.metrics.points) || [];
  const canvas = $("loss");
  const empty = points.filter((p) => p.train_loss != null || p.val_loss != null).length < 2;
  $("loss-empty").hidden = !empty;
  const { ctx, width, height } = setupCanvas(canvas);
  ctx.clearRect(0, 0, width, height);
  const legend = $("loss-legend");
  legend.replaceChildren();
  if (empty) return;
  const series = [
    ["train", "train_loss", getComputedStyle(document.body).getPropertyValue("--accent").trim() || "#e8590c"],
    ["val", "val_loss", getComputedStyle(document.body).getPropertyValue("--val").trim() || "#2563eb"],
  ].filter(([, key]) => points.some((p) => p[key] != null));
  for (const [name, , color] of series) {
    legend.append(el("span", {}, el("i", { style: `background:${color}` }), name));
  }
  const values = series.flatMap(([, key]) => points.filter((p) => p[key] != null).map((p) => p[key]));
  const steps = points.map((p) => p.step);
  let [y0, y1] = [Math.min(...values), Math.max(...values)];
  const pad = (y1 - y0) * 0.08 || 0.5;
  y0 -= pad;
  y1 += pad;
  const [x0, x1] = [Math.min(...steps), Math.max(...steps) || 1];
  const m = { left: 40, right: 10, top: 8, bottom: 22 };
  const X = (s) => m.left + ((s - x0) / (x1 - x0 || 1)) * (width - m.left - m.right);
  const Y = (v) => m.top + (1 - (v - y0) / (y1 - y0)) * (height - m.top - m.bottom);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  ctx.strokeStyle = "#eeece8";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of niceTicks(y0, y1, 4)) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(m.left, y);
    ctx.lineTo(width - m.right, y);
    ctx.stroke();
    ctx.fillText(v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, ""), m.left - 6, y);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const s of niceTicks(x0, x1, 5)) ctx.fillText(formatCount(s), X(s), height - m.bottom + 6);

  for (const [name, key, color] of series) {
    const pts = points.filter((p) => p[key] != null);
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = name === "train" ? 1.6 : 1.8;
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(X(p.step), Y(p[key])) : ctx.moveTo(X(p.step), Y(p[key]))));
    ctx.stroke();
    if (name === "val" && pts.length <= 60) {
      for (const p of pts) {
        ctx.beginPath();
        ctx.arc(X(p.step), Y(p[key]), 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }
}

// ---------------------------------------------------------------- generation

function readForm() {
  const num = (id) => Number($(id).value);
  const topK = Math.max(0, Math.floor(num("top-k")));
  const topP = num("top-p");
  const seedText = $("seed").value.trim();
  return {
    prompt: $("prompt").value,
    max_tokens: Math.floor(num("max-tokens")),
    temperature: num("temperature"),
    top_k: topK > 0 ? topK : null,
    top_p: topP > 0 && topP < 1 ? topP : null,
    seed: seedText === "" ? null : Math.floor(Number(seedText)),
    return_attention: $("attention-toggle").checked,
  };
}

function resetOutput(promptText) {
  state.tokens = [];
  state.attention = null;
  state.averages = new Map();
  state.selected = null;
  state.pinned = null;
  const out = $("output");
  out.replaceChildren(el("span", { class: "prompt-text", text: promptText }), el("span", { id: "gen-text" }), el("span", { class: "cursor" }));
  $("chips").replaceChildren();
  $("attends").textContent = "";
  $("gen-stats").textContent = "";
  drawHeatmap();
}

function addChip(token) {
  const index = state.tokens.length;
  state.tokens.push(token);
  const chip = el("span", { class: `chip ${token.kind}${isSpecial(token.text) ? " special" : ""}`, "data-index": index });
  const shown = visible(token.text);
  if (shown !== token.text) chip.append(el("span", { class: "ws", text: shown }));
  else chip.textContent = token.text || "∅";
  chip.title = `#${index} · id ${token.id}`;
  $("chips").append(chip);
}

function setRunning(running) {
  $("generate").disabled = running;
  $("generate").textContent = running ? "Generating…" : "Generate";
  $("stop").disabled = !running;
  if (!running) document.querySelectorAll(".output .cursor").forEach((c) => c.remove());
}

async function generate(event) {
  event.preventDefault();
  if (state.controller) return;
  clearError();
  const body = readForm();
  resetOutput(body.prompt);
  setRunning(true);
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  let firstToken = null;
  let count = 0;
  try {
    const r = await fetch("/api/generate/stream", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      showError(describeError(err, r.status), err.error === "rate_limited" ? "warn" : "error");
      if (err.error === "rate_limited") {
        setRunning(false);
        state.controller = null;
        startRetryCountdown(err.retry_after_seconds || Number(r.headers.get("Retry-After")) || 1);
        return;
      }
      return;
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const genText = $("gen-text");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const ev = JSON.parse(line.slice(6));
          if (ev.type === "start") {
            for (const t of ev.prompt_tokens) addChip({ id: t.id, text: t.text, kind: "prompt" });
          } else if (ev.type === "token") {
            if (firstToken === null) firstToken = performance.now();
            count += 1;
            genText.textContent += ev.delta;
            addChip({ id: ev.id, text: ev.text, kind: "generated" });
          } else if (ev.type === "done") {
            genText.textContent += ev.delta;
            const seconds = ((performance.now() - started) / 1000).toFixed(2);
            const ttft = firstToken ? ` · first token ${Math.round(firstToken - started)} ms` : "";
            $("gen-stats").textContent = `${ev.usage.completion_tokens} tokens in ${seconds} s${ttft} · ${ev.finish_reason}`;
            setAttention(ev.attention);
          } else if (ev.type === "error") {
            showError(describeError(ev));
          }
        }
      }
      const out = $("output");
      out.scrollTop = out.scrollHeight;
    }
  } catch (e) {
    if (e.name === "AbortError") {
      $("gen-stats").textContent = `${count} tokens · stopped`;
    } else {
      showError("The connection to the server failed: " + e.message);
    }
  } finally {
    if (state.controller === controller) state.controller = null;
    if (!state.retryTimer) setRunning(false);
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

// ---------------------------------------------------------------- attention

function setAttention(list) {
  state.attention = null;
  state.averages = new Map();
  if (list && list.length) {
    state.attention = new Map(list.map((a) => [`${a.layer}:${a.head}`, a.weights]));
    const chips = [...document.querySelectorAll(".chip")];
    const T = list[0].weights.length;
    chips.slice(T).forEach((c) => c.classList.add("no-attention"));
  }
  drawHeatmap();
  selectToken(state.pinned);
}

function currentMatrix() {
  if (!state.attention) return null;
  const layer = $("layer-select").value || "0";
  const head = $("head-select").value || "avg";
  if (head !== "avg") return state.attention.get(`${layer}:${head}`) || null;
  if (!state.averages.has(layer)) {
    const heads = state.info ? state.info.model.n_head : 1;
    const mats = [...Array(heads).keys()].map((h) => state.attention.get(`${layer}:${h}`)).filter(Boolean);
    if (!mats.length) return null;
    const avg = mats[0].map((row, i) => row.map((_, j) => mats.reduce((s, m) => s + m[i][j], 0) / mats.length));
    state.averages.set(layer, avg);
  }
  return state.averages.get(layer);
}

const heatmapGeometry = { left: 0, top: 0, cell: 0, n: 0 };

function drawHeatmap() {
  const canvas = $("heatmap");
  const matrix = currentMatrix();
  $("heatmap-empty").hidden = !!matrix;
  const { ctx, width, height } = setupCanvas(canvas);
  ctx.clearRect(0, 0, width, height);
  if (!matrix) return;
  const n = matrix.length;
  const labels = n <= 40;
  const margin = labels ? 30 : 4;
  const size = Math.min(width, height) - margin - 4;
  const cell = size / n;
  const left = Math.max(margin, (width - size + margin) / 2);
  const top = margin;
  Object.assign(heatmapGeometry, { left, top, cell, n });

  // Weights on a square-root scale, so that small but real attention stays visible.
  const image = ctx.createImageData(n, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const o = (i * n + j) * 4;
      if (j <= i) {
        const [r, g, b] = rampColor(Math.sqrt(matrix[i][j] || 0));
        image.data.set([r, g, b, 255], o);
      } else {
        image.data.set([0, 0, 0, 0], o); // masked: a token never sees later ones
      }
    }
  }
  const off = document.createElement("canvas");
  off.width = n;
  off.height = n;
  off.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, left, top, cell * n, cell * n);

  const promptLen = state.tokens.filter((t) => t.kind === "prompt").length;
  if (promptLen > 0 && promptLen < n) {
    ctx.strokeStyle = "rgba(31,35,40,0.35)";
    ctx.setLineDash([3, 3]);
    ctx.lineWidth = 1;
    // Only where both sides exist: generated rows (below) looking at prompt columns (left).
    ctx.beginPath();
    ctx.moveTo(left + promptLen * cell, top + promptLen * cell);
    ctx.lineTo(left + promptLen * cell, top + n * cell);
    ctx.moveTo(left, top + promptLen * cell);
    ctx.lineTo(left + promptLen * cell, top + promptLen * cell);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  if (labels) {
    ctx.font = `${Math.min(11, Math.max(8, cell * 0.8))}px ui-monospace, monospace`;
    ctx.fillStyle = "#6b7280";
    for (let i = 0; i < n; i++) {
      const t = state.tokens[i] ? visible(state.tokens[i].text).slice(0, 3) : "";
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(t, left - 4, top + (i + 0.5) * cell);
      ctx.save();
      ctx.translate(left + (i + 0.5) * cell, top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(t, 0, 0);
      ctx.restore();
    }
  }

  const sel = state.selected ?? state.pinned;
  if (sel != null && sel < n) {
    ctx.strokeStyle = "#e8590c";
    ctx.lineWidth = 2;
    ctx.strokeRect(left - 1, top + sel * cell - 1, (sel + 1) * cell + 2, cell + 2);
  }
}

function heatmapCell(event) {
  const rect = $("heatmap").getBoundingClientRect();
  const { left, top, cell, n } = heatmapGeometry;
  if (!n) return null;
  const i = Math.floor((event.clientY - rect.top - top) / cell);
  const j = Math.floor((event.clientX - rect.left - left) / cell);
  if (i < 0 || j < 0 || i >= n || j >= n) return null;
  return { i, j };
}

function tokenLabel(index) {
  const t = state.tokens[index];
  return t ? `"${visible(t.text)}" #${index}` : `#${index}`;
}

function onHeatmapMove(event) {
  const tip = $("tooltip");
  const matrix = currentMatrix();
  const hit = matrix && heatmapCell(event);
  if (!hit || hit.j > hit.i) {
    tip.hidden = true;
    return;
  }
  tip.textContent = `${tokenLabel(hit.i)} → ${tokenLabel(hit.j)}\nweight ${matrix[hit.i][hit.j].toFixed(4)}`;
  tip.style.left = event.clientX + 14 + "px";
  tip.style.top = event.clientY + 12 + "px";
  tip.hidden = false;
}

function selectToken(index) {
  state.selected = index;
  const chips = document.querySelectorAll(".chip");
  chips.forEach((c) => {
    c.classList.remove("active");
    c.style.background = "";
    c.style.color = "";
  });
  const attends = $("attends");
  if (index == null || !chips[index]) {
    attends.textContent = "";
    drawHeatmap();
    return;
  }
  chips[index].classList.add("active");
  const matrix = currentMatrix();
  if (!matrix) {
    attends.textContent = state.tokens.length ? 'Attention not available: generate with "return weights" on.' : "";
    drawHeatmap();
    return;
  }
  if (index >= matrix.length) {
    attends.textContent = "No attention for this token.";
    drawHeatmap();
    return;
  }
  const row = matrix[index];
  const peak = Math.max(...row) || 1;
  row.forEach((w, j) => {
    const alpha = Math.sqrt(w / peak);
    chips[j].style.background = `rgba(232, 89, 12, ${(0.85 * alpha).toFixed(3)})`;
    if (alpha > 0.6) chips[j].style.color = "#fff";
  });
  const top = row.map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, 4);
  attends.replaceChildren(
    `${tokenLabel(index)} attends to `,
    ...top.flatMap(([w, j], k) => [k ? " · " : "", el("code", { text: visible(state.tokens[j].text) }), ` ${(w * 100).toFixed(0)}%`]),
  );
  drawHeatmap();
}

// ---------------------------------------------------------------- wiring

function linkPair(rangeId, numberId) {
  const range = $(rangeId);
  const number = $(numberId);
  range.addEventListener("input", () => (number.value = range.value));
  number.addEventListener("input", () => (range.value = number.value));
}

function init() {
  linkPair("temperature-range", "temperature");
  linkPair("top-p-range", "top-p");
  $("prompt-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", stop);
  $("error-close").addEventListener("click", clearError);
  $("seed-dice").addEventListener("click", () => ($("seed").value = Math.floor(Math.random() * 1e6)));
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("prompt-form").requestSubmit();
  });
  for (const id of ["layer-select", "head-select"]) {
    $(id).addEventListener("change", () => {
      drawHeatmap();
      selectToken(state.selected ?? state.pinned);
    });
  }
  const chips = $("chips");
  chips.addEventListener("mouseover", (e) => {
    const chip = e.target.closest(".chip");
    if (chip) selectToken(Number(chip.dataset.index));
  });
  chips.addEventListener("mouseleave", () => selectToken(state.pinned));
  chips.addEventListener("click", (e) => {
    const chip = e.target.closest(".chip");
    if (!chip) return;
    const index = Number(chip.dataset.index);
    document.querySelectorAll(".chip.pinned").forEach((c) => c.classList.remove("pinned"));
    state.pinned = state.pinned === index ? null : index;
    if (state.pinned != null) chip.classList.add("pinned");
    selectToken(index);
  });
  const heatmap = $("heatmap");
  heatmap.addEventListener("mousemove", onHeatmapMove);
  heatmap.addEventListener("mouseleave", () => ($("tooltip").hidden = true));
  heatmap.addEventListener("click", (e) => {
    const hit = heatmapCell(e);
    if (!hit) return;
    state.pinned = hit.i;
    document.querySelectorAll(".chip.pinned").forEach((c) => c.classList.remove("pinned"));
    const chip = document.querySelectorAll(".chip")[hit.i];
    if (chip) chip.classList.add("pinned");
    selectToken(hit.i);
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      drawHeatmap();
      drawLoss();
    }, 100);
  });
  loadInfo().then(() => drawHeatmap());
  loadMetrics();
  pollHealth();
  setInterval(pollHealth, 10000);
}

document.addEventListener("DOMContentLoaded", init);
