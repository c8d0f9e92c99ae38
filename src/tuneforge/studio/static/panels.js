// tuneforge studio: the chat panel (a finished run and its base side by side, POST /api/runs/NAME/chat) and the
// memory-per-method panel (POST /api/plan). Uses app.js's helpers ($, el, api, formValues) and its RUNS / SCHEMA.
"use strict";

let CHAT = {base: [], tuned: []};

function fillChatRuns() {
  const sel = $("#chat-run"), old = sel.value;
  const ok = RUNS.filter(r => r.status === "finished" && SCHEMA.stages[r.stage]?.model_kind === "causal_lm");
  sel.replaceChildren(...ok.map(r => el("option", {value: r.name, text: r.name})));
  if (ok.some(r => r.name === old)) sel.value = old;
}

function setupChat() {
  $("#chat-form").addEventListener("submit", sendChat);
  const resetChat = () => { CHAT = {base: [], tuned: []}; drawChat(); };
  $("#chat-reset").addEventListener("click", resetChat);
  $("#chat-run").addEventListener("change", resetChat);
}

function drawChat() {
  for (const side of ["base", "tuned"])
    $(`#chat-${side}`).replaceChildren(...CHAT[side].map(m => el("div", {class: `msg ${m.role}`, text: m.content})));
}

async function sendChat() {
  const text = $("#chat-input").value.trim(), run = $("#chat-run").value;
  if (!text || !run) return;
  for (const side of ["base", "tuned"]) CHAT[side].push({role: "user", content: text});
  $("#chat-input").value = "";
  const asked = {base: [...CHAT.base], tuned: [...CHAT.tuned]};
  for (const side of ["base", "tuned"]) { CHAT[side].push({role: "assistant", content: ""}); $(`#chat-${side}`).dataset.done = ""; }
  drawChat();
  $("#chat-state").textContent = "generating ...";
  let r;
  try {
    r = await fetch(`/api/runs/${encodeURIComponent(run)}/chat/stream`, {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({...asked, max_new_tokens: +$("#chat-max").value || 64})});
  } catch (e) { r = null; }
  if (!r || r.status !== 200) {  // refused before generating: take the turn back
    const error = r ? (await r.json().catch(() => ({}))).error : "the studio is not reachable";
    CHAT = {base: asked.base.slice(0, -1), tuned: asked.tuned.slice(0, -1)};
    drawChat();
    $("#chat-state").textContent = error || `HTTP ${r.status}`;
    return;
  }
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {  // JSON lines: {"side", "text"} pieces as they are decoded, {"side", "done"}, or {"error"}
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines.filter(Boolean)) {
      const ev = JSON.parse(line);
      if (ev.error) { $("#chat-state").textContent = ev.error; continue; }
      const last = CHAT[ev.side][CHAT[ev.side].length - 1];
      if (ev.text !== undefined) last.content += ev.text;
      if (ev.done) { last.content = ev.done.text; $(`#chat-${ev.side}`).dataset.done = "1"; }
      drawChat();
    }
  }
  if ($("#chat-state").textContent === "generating ...") $("#chat-state").textContent = "";
}

// ---- memory per method (tuneforge plan) -----------------------------------------------------------------------
async function estimateMemory() {
  const box = $("#plan-view");
  box.textContent = "estimating ...";
  const {status, data} = await api("/api/plan", formValues());
  if (status !== 200) { box.replaceChildren(el("div", {class: "err", text: data.error})); return; }
  const chosen = $("#f-method").value;
  const t = el("table", {class: "plan"}, el("tr", {}, ...["method", "memory", "trainable", ""].map(h => el("th", {text: h}))));
  for (const r of data.rows)
    t.append(el("tr", {class: r.method === chosen ? "sel" : ""}, el("td", {text: r.method}),
      el("td", {text: r.error ? "—" : (r.gib < 0.1 ? `${(r.gib * 1024).toFixed(1)} MiB` : `${r.gib.toFixed(2)} GiB`)}), el("td", {text: r.error ? r.error : r.trainable_params.toLocaleString()}),
      el("td", {class: r.fits ? "fits" : "nofit", text: r.error ? "" : (r.fits ? "fits" : "too big")})));
  box.className = "";
  box.replaceChildren(el("p", {text: `${data.precision}, this machine: ${data.budget_gib.toFixed(1)} GiB`}), t);
}

// ---- compare: generations and reports side by side ------------------------------------------------------------
function generationsTable(runs) {
  const key = g => g.question ?? g.prompt;
  const byRun = runs.map(r => new Map((r.generations || []).map(g => [key(g), g])));
  const questions = [...new Set(runs.flatMap(r => (r.generations || []).map(key)))];
  if (!questions.length) return el("p", {class: "muted", text: "no generations.jsonl (eval.generate_samples: 0?)"});
  const t = el("table", {class: "generations"}, el("tr", {}, el("th", {text: "prompt"}), el("th", {text: "reference"}),
    el("th", {text: "base"}), ...runs.map(r => el("th", {text: r.name}))));
  for (const q of questions) {
    const first = byRun.map(m => m.get(q)).find(Boolean);
    t.append(el("tr", {}, el("td", {text: q}), el("td", {text: first.reference ?? ""}), el("td", {text: first.base ?? ""}),
      ...byRun.map(m => el("td", {text: m.get(q)?.tuned ?? "—"}))));
  }
  return t;
}

function reportsSideBySide(runs) {
  return el("div", {class: "chat-cols"}, ...runs.map(r => el("div", {}, el("h3", {text: `${r.name}: report.md`}),
    el("pre", {class: "report", text: r.report || "(no report.md yet)"}))));
}

// ---- predict on a file (classify runs) ------------------------------------------------------------------------
function predictPanel(name) {
  const input = el("input", {id: "predict-input", size: 50, placeholder: "CSV or JSONL with the run's text column"});
  const base = el("input", {id: "predict-base", type: "checkbox"});
  const go = el("button", {id: "predict", type: "button", text: "Predict"}), out = el("div", {id: "predict-view"});
  go.addEventListener("click", async () => {
    if (!paneIs(name)) return;  // results.js: the pane shows another run than the one picked
    out.textContent = "predicting ...";
    const {status, data} = await api(`/api/runs/${encodeURIComponent(name)}/predict`,
                                     {input: input.value.trim(), base: base.checked});
    if (status !== 200) { out.replaceChildren(el("div", {class: "err", text: data.error})); return; }
    const cols = Object.keys(data.preview[0] || {}).filter(k => k !== "probabilities");
    const t = el("table", {class: "preview"}, el("tr", {}, ...cols.map(c => el("th", {text: c}))));
    data.preview.forEach(r => t.append(el("tr", {}, ...cols.map(c => el("td", {text: String(r[c])})))));
    const acc = data.accuracy == null ? "" : `, accuracy ${data.accuracy.toFixed(4)} against the file's labels`;
    out.replaceChildren(el("p", {id: "predict-summary", text: `${data.records} rows labelled${acc} -> ${data.output}`}), t);
  });
  return el("div", {class: "predict"}, el("h3", {text: "predict on a file"}),
            el("div", {class: "actions"}, input, el("label", {}, base, " base model (untrained head)"), go), out);
}
