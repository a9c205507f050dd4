// embergpt web UI: plain JavaScript, no build step, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);

// What the token inspector (chips, token details, heatmap) shows for one run: the last generation in the
// Generate tab, the last reply in the Chat tab. Each tab keeps its own.
function emptyView() {
  return {
    tokens: [], // {id, text, kind: "prompt" | "generated" | "forced", logprob?, top?: [{id, text, logprob}]}
    attention: null, // Map "layer:head" -> ragged rows (row i: weights over positions 0..i)
    averages: new Map(), // layer -> head-averaged rows
    selected: null, // token index shown (hover)
    pinned: null, // token index pinned (click)
  };
}

const state = {
  info: null,
  tab: "generate",
  views: { generate: emptyView(), chat: emptyView() },
  controller: null, // the AbortController of the request in flight (one at a time, either tab)
  running: null, // which tab's request that is: "generate" | "chat"
  metrics: null,
  retryTimer: null,
  warming: false, // the server is compiling the model; requests wait
  chat: { messages: [], epoch: 0 }, // finished turns sent back to the server: {role, content}; epoch: Clear count
};

const view = () => state.views[state.tab];

// Tool-call markers of the chat template: a reply's calculator call and the output the server forces after it.
const TOOL_MARKERS = new Set(["<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]);

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

function percent(logprob) {
  const p = 100 * Math.exp(logprob); // three significant digits at any size
  return (p >= 0.001 ? p.toPrecision(3) : p.toExponential(2)) + "%";
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
    setRunning(null);
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
        `${e.sequence_len} tokens: ask for at most ${e.max_tokens_allowed} new tokens or shorten the prompt` +
        (state.tab === "chat" ? " (or clear the conversation)." : ".");
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
      if (status === 404) return "This server does not offer this endpoint (an older embergpt?).";
      return e.message || `The server answered ${status || "with an error"}${e.error ? " (" + e.error + ")" : ""}.`;
  }
}

function startRetryCountdown(seconds) {
  const buttons = [$("generate"), $("chat-send")];
  let left = Math.ceil(seconds);
  const label = () => buttons.forEach((b) => ((b.disabled = true), (b.textContent = `Wait ${left} s`)));
  label();
  state.retryTimer = setInterval(() => {
    left -= 1;
    if (left <= 0) {
      clearInterval(state.retryTimer);
      state.retryTimer = null;
      setRunning(null);
      $("error").hidden = true;
    } else {
      label();
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
  // what the model really has: a bigram (a table) has no layers, heads or attention
  const shape = m.structure || { layers: m.n_layer, heads: m.n_head, kv_heads: m.n_kv_head, attention: true };
  const layersText = shape.attention ? `${shape.layers} layers × ${shape.heads} heads` : "no layers, no attention";
  $("model-summary").replaceChildren(
    el("b", { text: info.model_id }),
    ` · ${m.kind} · ${formatCount(m.num_params)} parameters · ${layersText} · ` +
      `context ${m.sequence_len} · ${t.kind} tokenizer (${t.vocab_size})`,
  );
  if (!shape.attention) {
    $("attention-toggle").checked = false;
    $("attention-toggle").disabled = true;
  }
  const ckpt = info.checkpoint;
  const rows = [
    ["model", `${m.kind} · ${m.num_params.toLocaleString()} params`],
    ["layers", shape.attention ? `${shape.layers} × ${shape.heads} heads (${shape.kv_heads} kv)` : "none (a table)"],
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
  fillSelect($("layer-select"), [...Array(shape.layers).keys()].map((i) => [String(i), `${i}`]));
  fillSelect($("head-select"), [["avg", "average of heads"], ...[...Array(shape.heads).keys()].map((i) => [String(i), `${i}`])]);
}

function fillSelect(select, options) {
  select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
}

// Returns whether the server is still warming up (compiling the model): requests wait until it is ready.
async function pollHealth() {
  const dot = $("status");
  const label = $("status-text");
  let warming = false;
  try {
    const r = await fetch("/api/health");
    const h = await r.json();
    warming = r.ok && h.status === "warming_up";
    dot.className = "status " + (r.ok && h.status === "ok" ? "ok" : warming ? "warming" : "down");
    const s = h.scheduler || {};
    dot.title = warming
      ? `warming up: compiling the model (compile ${h.compile}); requests wait until it is ready`
      : `server ok · up ${Math.round(h.uptime_seconds)} s · ${s.active || 0} running, ${s.queued || 0} queued`;
  } catch (e) {
    dot.className = "status down";
    dot.title = "server unreachable";
  }
  state.warming = warming;
  label.textContent = warming ? "warming up…" : "";
  label.hidden = !warming;
  return warming;
}

async function healthLoop() {
  const warming = await pollHealth();
  setTimeout(healthLoop, warming ? 2000 : 10000);
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

// Plot margins of the loss chart, in CSS pixels: room for the tick labels and the axis titles.
const LOSS_MARGIN = { left: 58, right: 10, top: 8, bottom: 38 };

function drawLoss() {
  const points = (state.metrics && state.metrics.points) || [];
  const canvas = $("loss");
  const empty = points.filter((p) => p.train_loss != null || p.val_loss != null).length < 2;
  $("loss-empty").hidden = !empty;
  $("loss-xtitle").hidden = $("loss-ytitle").hidden = empty;
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
  const m = LOSS_MARGIN;
  const X = (s) => m.left + ((s - x0) / (x1 - x0 || 1)) * (width - m.left - m.right);
  const Y = (v) => m.top + (1 - (v - y0) / (y1 - y0)) * (height - m.top - m.bottom);

  // Axis titles (HTML, so they stay crisp and readable by tests) centred on the plot area.
  Object.assign($("loss-ytitle").style, { left: "0px", top: `${(m.top + height - m.bottom) / 2}px` });
  Object.assign($("loss-xtitle").style, { left: `${(m.left + width - m.right) / 2}px`, bottom: "0px" });

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
  for (const s of niceTicks(x0, x1, 5)) ctx.fillText(formatCount(s), X(s), height - m.bottom + 5);

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

// ---------------------------------------------------------------- requests

// "a, b\, c, \n\n" -> ["a", "b, c", "\n\n"]: commas separate, a backslash escapes (\n newline, \t tab).
function parseStopStrings(text) {
  const out = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length) {
      const n = text[++i];
      cur += n === "n" ? "\n" : n === "t" ? "\t" : n;
    } else if (c === ",") {
      out.push(cur);
      cur = "";
    } else {
      cur += c;
    }
  }
  out.push(cur);
  // Spaces around the separating commas are layout, not part of a stop string (write "\ " to keep one).
  return out.map((s) => s.replace(/^ +| +$/g, "")).filter((s) => s.length > 0);
}

function readSampling() {
  const num = (id) => Number($(id).value);
  const topK = Math.max(0, Math.floor(num("top-k")));
  const topP = num("top-p");
  const minP = num("min-p");
  const seedText = $("seed").value.trim();
  const body = {
    max_tokens: Math.floor(num("max-tokens")),
    temperature: num("temperature"),
    top_k: topK > 0 ? topK : null,
    top_p: topP > 0 && topP < 1 ? topP : null,
    min_p: minP > 0 ? minP : null,
    repetition_penalty: $("repetition-penalty").value.trim() === "" ? 1 : num("repetition-penalty"),
    seed: seedText === "" ? null : Math.floor(Number(seedText)),
    top_logprobs: Math.max(0, Math.floor(num("top-logprobs") || 0)),
    return_attention: $("attention-toggle").checked,
  };
  const stop = parseStopStrings($("stop-strings").value);
  if (stop.length) body.stop = stop;
  return body;
}

// POST `body` to a streaming endpoint and call onEvent for each server-sent event.
// Returns {ok: true} when the stream ended, or {ok: false, status, error, retryAfter} for an HTTP error.
async function streamEvents(url, body, signal, onEvent) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  if (!r.ok) {
    const error = await r.json().catch(() => ({}));
    return { ok: false, status: r.status, error, retryAfter: error.retry_after_seconds || Number(r.headers.get("Retry-After")) || 1 };
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
      }
    }
  }
  return { ok: true };
}

function reportHttpError(result) {
  const rateLimited = result.error.error === "rate_limited";
  showError(describeError(result.error, result.status), rateLimited ? "warn" : "error");
  if (rateLimited) startRetryCountdown(result.retryAfter);
}

// kind: "generate" or "chat" while that tab's request runs, null when none does (one request at a time).
function setRunning(kind) {
  state.running = kind;
  if (state.retryTimer) return; // the countdown owns the buttons
  $("generate").disabled = kind != null;
  $("generate").textContent = kind === "generate" ? "Generating…" : "Generate";
  $("chat-send").disabled = kind != null;
  $("chat-send").textContent = "Send";
  $("stop").disabled = kind !== "generate";
  $("chat-stop").disabled = kind !== "chat";
  if (kind == null) document.querySelectorAll(".cursor").forEach((c) => c.remove());
}

function stop(kind) {
  if (state.controller && state.running === kind) state.controller.abort();
}

// ---------------------------------------------------------------- the token inspector

function tokenFromEvent(ev) {
  const token = { id: ev.id, text: ev.text, kind: ev.forced ? "forced" : "generated" };
  if (typeof ev.logprob === "number") token.logprob = ev.logprob;
  if (Array.isArray(ev.top_logprobs)) token.top = ev.top_logprobs;
  return token;
}

function resetView(name) {
  state.views[name] = emptyView();
  if (state.tab === name) renderInspector();
}

function chipFor(token, index) {
  const classes = `chip ${token.kind}${isSpecial(token.text) ? " special" : ""}`;
  const chip = el("span", { class: classes, "data-index": index, "data-id": token.id });
  const shown = visible(token.text);
  if (shown !== token.text) chip.append(el("span", { class: "ws", text: shown }));
  else chip.textContent = token.text || "∅";
  const p = token.logprob != null ? ` · p ${percent(token.logprob)}` : "";
  chip.title = `#${index} · id ${token.id}${p}`;
  return chip;
}

function addToken(name, token) {
  const v = state.views[name];
  v.tokens.push(token);
  if (state.tab !== name) return;
  const chips = $("chips");
  if (v.tokens.length === 1) chips.replaceChildren();
  chips.append(chipFor(token, v.tokens.length - 1));
}

// Redraw everything the inspector shows from the current tab's view (after a tab switch or a reset).
function renderInspector() {
  const v = view();
  const chips = $("chips");
  if (v.tokens.length) chips.replaceChildren(...v.tokens.map((t, i) => chipFor(t, i)));
  else chips.replaceChildren(el("span", { class: "placeholder", text: state.tab === "chat" ? "The last reply's tokens appear here." : "Tokens appear as chips." }));
  $("tokens-title").textContent = state.tab === "chat" ? "Tokens of the last reply" : "Tokens";
  if (v.pinned != null && chips.children[v.pinned]) chips.children[v.pinned].classList.add("pinned");
  selectToken(v.pinned);
}

function setAttention(name, list) {
  const v = state.views[name];
  v.attention = null;
  v.averages = new Map();
  if (list && list.length) v.attention = new Map(list.map((a) => [`${a.layer}:${a.head}`, a.weights]));
  if (state.tab === name) renderInspector();
}

function currentMatrix() {
  const v = view();
  if (!v.attention) return null;
  const layer = $("layer-select").value || "0";
  const head = $("head-select").value || "avg";
  if (head !== "avg") return v.attention.get(`${layer}:${head}`) || null;
  if (!v.averages.has(layer)) {
    const heads = state.info ? state.info.model.n_head : 1;
    const mats = [...Array(heads).keys()].map((h) => v.attention.get(`${layer}:${h}`)).filter(Boolean);
    if (!mats.length) return null;
    const avg = mats[0].map((row, i) => row.map((_, j) => mats.reduce((s, m) => s + m[i][j], 0) / mats.length));
    v.averages.set(layer, avg);
  }
  return v.averages.get(layer);
}

const heatmapGeometry = { left: 0, top: 0, cell: 0, n: 0 };
const HEATMAP_GUTTER = 58; // axis title (16 px) + token labels (38 px) + a gap, on the left and on top
const LABEL_PITCH = 11; // the least distance between two labels, in CSS pixels

function drawHeatmap() {
  const canvas = $("heatmap");
  const matrix = currentMatrix();
  $("heatmap-empty").hidden = !!matrix;
  $("heatmap-xtitle").hidden = $("heatmap-ytitle").hidden = !matrix;
  const { ctx, width, height } = setupCanvas(canvas);
  ctx.clearRect(0, 0, width, height);
  $("heatmap-rows").replaceChildren();
  $("heatmap-cols").replaceChildren();
  Object.assign(heatmapGeometry, { n: 0 });
  if (!matrix) return;
  const n = matrix.length;
  const size = Math.max(20, Math.min(width, height) - HEATMAP_GUTTER - 4);
  const cell = size / n;
  const left = HEATMAP_GUTTER + Math.max(0, (width - HEATMAP_GUTTER - size - 4) / 2);
  const top = HEATMAP_GUTTER;
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

  const tokens = view().tokens;
  const promptLen = tokens.filter((t) => t.kind === "prompt").length;
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

  // Token labels on both axes: every token when the cells are tall enough, else every stride-th one.
  const stride = Math.max(1, Math.ceil(LABEL_PITCH / cell));
  const rows = [];
  const cols = [];
  for (let i = 0; i < n; i += stride) {
    const text = tokens[i] ? visible(tokens[i].text) : "";
    const label = stride > 1 ? `${i}:${text}` : text;
    const centre = (i + 0.5) * cell;
    rows.push(el("span", {
      class: "axis-label row", text: label, "data-index": i,
      style: `top:${top + centre}px; right:${width - left + 4}px`,
    }));
    cols.push(el("span", {
      class: "axis-label col", text: label, "data-index": i,
      style: `left:${left + centre}px; bottom:${height - top + 4}px`,
    }));
  }
  $("heatmap-rows").replaceChildren(...rows);
  $("heatmap-cols").replaceChildren(...cols);
  Object.assign($("heatmap-ytitle").style, { left: "0px", top: `${top + size / 2}px` });
  Object.assign($("heatmap-xtitle").style, { left: `${left + size / 2}px`, top: "0px" });

  const v = view();
  const sel = v.selected ?? v.pinned;
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
  const t = view().tokens[index];
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

// The selected token's probability and the alternatives the model weighed at that step.
function renderTokenDetail(index) {
  const box = $("token-detail");
  const token = index == null ? null : view().tokens[index];
  if (!token) {
    box.replaceChildren();
    return;
  }
  const name = el("code", { text: visible(token.text) || "∅" });
  if (token.kind === "prompt") {
    box.replaceChildren(el("div", { class: "headline" }, name, ` #${index} · id ${token.id} · part of the prompt (not sampled)`));
    return;
  }
  if (token.kind === "forced") {
    box.replaceChildren(el("div", { class: "headline" }, name, ` #${index} · id ${token.id} · inserted by the calculator tool (not sampled)`));
    return;
  }
  if (token.logprob == null) {
    box.replaceChildren(el("div", { class: "headline" }, name, ` #${index} · id ${token.id} · this server sends no probabilities`));
    return;
  }
  const headline = el("div", { class: "headline" }, name, ` #${index} · p = `,
    el("b", { class: "prob", text: percent(token.logprob) }), ` · logprob ${token.logprob.toFixed(3)}`);
  const rows = [];
  for (const alt of token.top || []) {
    const chosen = alt.id === token.id ? " chosen" : "";
    const p = Math.exp(alt.logprob);
    rows.push(
      el("code", { class: "alt-text" + chosen, text: visible(alt.text) || "∅", "data-id": alt.id }),
      el("div", { class: "bar" + chosen, style: `width:${Math.max(1, 100 * p).toFixed(1)}%` }),
      el("span", { class: "pct", text: percent(alt.logprob) }),
    );
  }
  box.replaceChildren(headline, ...(rows.length ? [el("div", { class: "alternatives" }, ...rows)] : []));
}

function selectToken(index) {
  const v = view();
  v.selected = index;
  const chips = $("chips").querySelectorAll(".chip");
  chips.forEach((c) => {
    c.classList.remove("active");
    c.style.background = "";
    c.style.color = "";
  });
  const attends = $("attends");
  renderTokenDetail(index);
  if (index == null || !chips[index]) {
    attends.textContent = "";
    drawHeatmap();
    return;
  }
  chips[index].classList.add("active");
  const matrix = currentMatrix();
  if (!matrix) {
    attends.textContent = v.tokens.length ? 'Attention not available: turn on "return weights" and run again.' : "";
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
    ...top.flatMap(([w, j], k) => [k ? " · " : "", el("code", { text: visible(v.tokens[j].text) }), ` ${(w * 100).toFixed(0)}%`]),
  );
  drawHeatmap();
}

function pinToken(index) {
  const v = view();
  $("chips").querySelectorAll(".chip.pinned").forEach((c) => c.classList.remove("pinned"));
  v.pinned = v.pinned === index ? null : index;
  const chip = $("chips").querySelectorAll(".chip")[index];
  if (v.pinned != null && chip) chip.classList.add("pinned");
  selectToken(index);
}

// ---------------------------------------------------------------- the Generate tab

async function generate(event) {
  event.preventDefault();
  if (state.controller || state.retryTimer) return;
  clearError();
  const body = { prompt: $("prompt").value, ...readSampling() };
  resetView("generate");
  const out = $("output");
  const genText = el("span", { id: "gen-text" });
  out.replaceChildren(el("span", { class: "prompt-text", text: body.prompt }), genText, el("span", { class: "cursor" }));
  $("gen-stats").textContent = state.warming ? "waiting for the server's warm-up…" : "";
  setRunning("generate");
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  let firstToken = null;
  let count = 0;
  try {
    const result = await streamEvents("/api/generate/stream", body, controller.signal, (ev) => {
      if (ev.type === "start") {
        for (const t of ev.prompt_tokens) addToken("generate", { id: t.id, text: t.text, kind: "prompt" });
      } else if (ev.type === "token") {
        if (firstToken === null) firstToken = performance.now();
        count += 1;
        genText.textContent += ev.delta;
        addToken("generate", tokenFromEvent(ev));
      } else if (ev.type === "done") {
        genText.textContent += ev.delta;
        $("gen-stats").textContent = runStats(ev, started, firstToken);
        setAttention("generate", ev.attention);
      } else if (ev.type === "error") {
        showError(describeError(ev));
      }
      out.scrollTop = out.scrollHeight;
    });
    if (!result.ok) reportHttpError(result);
  } catch (e) {
    if (e.name === "AbortError") $("gen-stats").textContent = `${count} tokens · stopped`;
    else showError("The connection to the server failed: " + e.message);
  } finally {
    if (state.controller === controller) state.controller = null;
    setRunning(null);
  }
}

function runStats(done, started, firstToken) {
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const ttft = firstToken ? ` · first token ${Math.round(firstToken - started)} ms` : "";
  return `${done.usage.completion_tokens} tokens in ${seconds} s${ttft} · ${done.finish_reason}`;
}

// ---------------------------------------------------------------- the Chat tab

// A reply as the bubble shows it: plain text, and calculator calls with the output the server forced after them.
// Fed one token event at a time; special tokens that are not tool markers (e.g. <|assistant_end|>) show nothing.
class ReplyRenderer {
  constructor(bubble) {
    this.bubble = bubble;
    this.segments = []; // {type: "text", text, node} | {type: "tool", expr, output, phase, node}
  }

  // What is sent back as the assistant's turn: its text, or after a calculator call a list of parts, which the
  // server renders with the tool's special tokens, as the model wrote (and was forced to read) them.
  content() {
    if (!this.segments.some((seg) => seg.type === "tool")) return this.segments.map((seg) => seg.text).join("");
    return this.segments.flatMap((seg) => {
      if (seg.type === "text") return [{ type: "text", text: seg.text }];
      const call = { type: "python", text: seg.expr };
      const answered = seg.phase === "output" || seg.phase === "done"; // a stopped reply may end inside a call
      return answered ? [call, { type: "python_output", text: seg.output }] : [call];
    });
  }

  current() {
    return this.segments[this.segments.length - 1];
  }

  openTool() {
    const node = el("span", { class: "tool pending" });
    const seg = { type: "tool", expr: "", output: "", phase: "call", node };
    this.segments.push(seg);
    this.bubble.append(node);
    this.drawTool(seg);
  }

  drawTool(seg) {
    seg.node.classList.toggle("pending", seg.phase !== "done");
    const result = seg.phase === "done" || seg.phase === "output" ? seg.output : "…";
    seg.node.replaceChildren(
      el("span", { class: "tool-name", text: "calculator" }), ": ",
      el("span", { class: "tool-expr", text: seg.expr }), " = ",
      el("span", { class: "tool-result", text: result || "…" }),
    );
  }

  token(text, delta) {
    const seg = this.current();
    const inTool = seg && seg.type === "tool" && seg.phase !== "done";
    if (text === "<|python_start|>") return this.openTool();
    if (TOOL_MARKERS.has(text)) {
      if (!inTool) return;
      seg.phase = { "<|python_end|>": "await", "<|output_start|>": "output", "<|output_end|>": "done" }[text];
      return this.drawTool(seg);
    }
    if (isSpecial(text)) return;
    if (inTool) {
      if (seg.phase === "call") seg.expr += delta;
      else if (seg.phase === "output") seg.output += delta;
      return this.drawTool(seg);
    }
    this.appendText(delta);
  }

  appendText(delta) {
    if (!delta) return;
    let seg = this.current();
    if (!seg || seg.type !== "text") {
      seg = { type: "text", text: "", node: el("span", { class: "reply-text" }) };
      this.segments.push(seg);
      this.bubble.append(seg.node);
    }
    seg.node.textContent += delta;
    seg.text += delta;
  }
}

function chatMessage(role, text) {
  $("chat-empty")?.remove();
  const bubble = el("div", { class: "bubble" });
  if (text) bubble.textContent = text;
  const node = el("div", { class: `msg ${role}` }, bubble);
  $("messages").append(node);
  return { node, bubble };
}

function scrollChat() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

async function sendChat(event) {
  if (event) event.preventDefault();
  if (state.controller || state.retryTimer) return;
  const input = $("chat-input");
  const text = input.value;
  if (!text.trim()) return;
  clearError();
  const system = $("system-prompt").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...state.chat.messages, { role: "user", content: text }];
  const user = chatMessage("user", text);
  input.value = "";
  const reply = chatMessage("assistant", "");
  reply.bubble.append(el("span", { class: "cursor" }));
  const renderer = new ReplyRenderer(reply.bubble);
  const epoch = state.chat.epoch;
  scrollChat();
  resetView("chat");
  $("chat-stats").textContent = state.warming ? "waiting for the server's warm-up…" : "";
  setRunning("chat");
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  let firstToken = null;
  let finished = false;
  let count = 0;
  let note = "";
  const onEvent = (ev) => {
    if (ev.type === "start") {
      for (const t of ev.prompt_tokens) addToken("chat", { id: t.id, text: t.text, kind: "prompt" });
    } else if (ev.type === "token") {
      if (firstToken === null) firstToken = performance.now();
      count += 1;
      renderer.token(ev.text, ev.delta);
      reply.bubble.append(reply.bubble.querySelector(".cursor") || "");
      addToken("chat", tokenFromEvent(ev));
    } else if (ev.type === "done") {
      renderer.appendText(ev.delta);
      finished = true;
      reply.node.append(el("div", { class: "msg-meta", text: `${ev.usage.completion_tokens} tokens · ${ev.finish_reason}` }));
      $("chat-stats").textContent = runStats(ev, started, firstToken) + note;
      setAttention("chat", ev.attention);
    } else if (ev.type === "error") {
      showError(describeError(ev));
    }
    scrollChat();
  };
  try {
    let body = { messages, ...readSampling() };
    let result = await streamEvents("/api/chat/stream", body, controller.signal, onEvent);
    for (let retry = 0; retry < 2 && !result.ok; retry++) {
      const e = result.error;
      if (e.error === "context_length_exceeded" && e.max_tokens_allowed >= 1) {
        // The conversation nearly fills the model's context: answer anyway, with the reply that still fits.
        note += ` · reply capped at ${e.max_tokens_allowed} tokens (the context is nearly full; Clear starts over)`;
        body = { ...body, max_tokens: e.max_tokens_allowed };
      } else if (e.error === "attention_too_large" && body.return_attention) {
        // A long conversation outgrows the attention limit: answer anyway, without the weights.
        note += ` · attention off (over ${e.max_tokens_total} tokens)`;
        body = { ...body, return_attention: false };
      } else {
        break;
      }
      result = await streamEvents("/api/chat/stream", body, controller.signal, onEvent);
    }
    if (!result.ok) {
      // Nothing was generated: take the turn back, so the user can edit and resend it.
      user.node.remove();
      reply.node.remove();
      input.value = text;
      reportHttpError(result);
      return;
    }
  } catch (e) {
    if (e.name === "AbortError") $("chat-stats").textContent = `${count} tokens · stopped`;
    else showError("The connection to the server failed: " + e.message);
  } finally {
    if (state.controller === controller) state.controller = null;
    setRunning(null);
  }
  if (epoch !== state.chat.epoch) return;
  if (!finished && !count) {
    // Nothing came back: the turn stays on screen, greyed, but is not part of the conversation sent next time.
    user.node.classList.add("failed");
    reply.node.classList.add("failed");
    return;
  }
  // A stopped reply is kept as far as it went: it is what the user saw, so it is what the model is told it said.
  state.chat.messages.push({ role: "user", content: text }, { role: "assistant", content: renderer.content() });
}

function clearChat() {
  stop("chat");
  state.chat.epoch += 1; // a reply still finishing its abort must not land in the new conversation
  state.chat.messages = [];
  $("messages").replaceChildren(el("div", { class: "placeholder", id: "chat-empty", text: "Send a message to start a conversation." }));
  $("chat-stats").textContent = "";
  resetView("chat");
}

// ---------------------------------------------------------------- wiring

function showTab(name) {
  state.tab = name;
  document.body.dataset.tab = name;
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  $("tooltip").hidden = true;
  setRunning(state.running);
  renderInspector();
  drawLoss();
}

function linkPair(rangeId, numberId) {
  const range = $(rangeId);
  const number = $(numberId);
  range.addEventListener("input", () => (number.value = range.value));
  number.addEventListener("input", () => (range.value = number.value));
}

function init() {
  linkPair("temperature-range", "temperature");
  linkPair("top-p-range", "top-p");
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  $("prompt-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => stop("generate"));
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-stop").addEventListener("click", () => stop("chat"));
  $("chat-clear").addEventListener("click", clearChat);
  $("error-close").addEventListener("click", clearError);
  $("seed-dice").addEventListener("click", () => ($("seed").value = Math.floor(Math.random() * 1e6)));
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("prompt-form").requestSubmit();
  });
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  for (const id of ["layer-select", "head-select"]) {
    $(id).addEventListener("change", () => selectToken(view().selected ?? view().pinned));
  }
  const chips = $("chips");
  chips.addEventListener("mouseover", (e) => {
    const chip = e.target.closest(".chip");
    if (chip) selectToken(Number(chip.dataset.index));
  });
  chips.addEventListener("mouseleave", () => selectToken(view().pinned));
  chips.addEventListener("click", (e) => {
    const chip = e.target.closest(".chip");
    if (chip) pinToken(Number(chip.dataset.index));
  });
  const heatmap = $("heatmap");
  heatmap.addEventListener("mousemove", onHeatmapMove);
  heatmap.addEventListener("mouseleave", () => ($("tooltip").hidden = true));
  heatmap.addEventListener("click", (e) => {
    const hit = heatmapCell(e);
    if (!hit) return;
    view().pinned = null;
    pinToken(hit.i);
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
  healthLoop();
}

document.addEventListener("DOMContentLoaded", init);
