// tuneforge studio page: the form is drawn from /api/schema (the config schema, stage and method tables), checked
// by /api/validate (the code `tuneforge validate` runs) as it changes; runs are polled from /api/runs.
"use strict";

let DATA_OK = true, SCHEMA = null, RUNS = [], COMBINED = [], CURRENT = null, validateTimer = null, dataTimer = null, CHECKS = 0;
const $ = s => document.querySelector(s);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const k in attrs || {}) (k === "text") ? e.textContent = attrs[k] : e.setAttribute(k, attrs[k]);
  kids.forEach(c => e.append(c));
  return e;
};
const fmt = (v, d) => (v === null || v === undefined) ? "—" : (typeof v === "number" ? +v.toFixed(d ?? 4) : v);
const eta = s => s == null ? "—" : (s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`);

async function api(path, body) {
  const init = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {  // the studio is down or restarting: say so; the runs themselves keep training
    $("#offline").hidden = false;
    return {status: 0, data: {error: "the studio is not reachable (restarting?); runs keep training"}};
  }
  $("#offline").hidden = true;
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  return {status: r.status, data};
}

// ---- tabs ----------------------------------------------------------------------------------------------------
function show(tab) {
  document.querySelectorAll(".tabpane").forEach(p => p.hidden = p.id !== `tab-${tab}`);
  document.querySelectorAll(".tab").forEach(b => b.classList.toggle("on", b.dataset.tab === tab));
  location.hash = tab;
  if (tab !== "new") refreshRuns();
}

// ---- the form ------------------------------------------------------------------------------------------------
function fieldInput(f) {
  const id = "f-" + f.key.replace(/\./g, "-");
  let input;
  if (f.kind === "choice" || f.kind === "bool") {
    input = el("select", {id, "data-key": f.key});
    input.append(el("option", {value: "", text: `default (${JSON.stringify(f.default)})`}));
    for (const c of (f.kind === "bool" ? [true, false] : f.choices)) input.append(el("option", {value: String(c), text: String(c)}));
  } else {
    input = el("input", {id, "data-key": f.key, placeholder: f.default === null ? (f.required ? "required" : "")
                                                               : JSON.stringify(f.default)});
  }
  const bounds = Object.entries(f.bounds || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  const help = [f.help, f.kind === "yaml" ? "YAML value, e.g. [a, b]" : f.kind, bounds].filter(Boolean).join(" · ");
  return el("div", {class: "field"}, el("label", {for: id, text: f.key}), input,
            el("div", {class: "help", text: help}), el("div", {class: "err", "data-for": f.key}));
}

function buildForm() {
  const stage = $("#f-stage");
  for (const name in SCHEMA.stages) stage.append(el("option", {value: name, text: name}));
  stage.value = "sft";
  for (const sec of SCHEMA.sections) {
    if (sec.name === "data") {
      sec.fields.filter(f => f.key !== "data.train").forEach(f => $("#section-data").append(fieldInput(f)));
      continue;
    }
    const box = el("details", {class: "section", "data-stage": sec.stage || ""}, el("summary", {text: sec.name === "top" ? "other keys" : sec.name}));
    if (sec.stage) box.open = true;
    sec.fields.forEach(f => box.append(fieldInput(f)));
    $("#sections").append(box);
  }
  for (const [key, value] of Object.entries(SCHEMA.form_defaults)) {
    const input = document.querySelector(`[data-key="${key}"]`);
    if (input) input.value = value;
  }
  stage.addEventListener("change", () => { fillMethods(); changed(); checkData(); });
  $("#f-method").addEventListener("change", () => { methodFields(); changed(); });
  $("#form").addEventListener("input", e => { if (e.target.dataset.key === "data.train") checkDataSoon(); changed(); });
  $("#form").addEventListener("change", changed);
  $("#launch").addEventListener("click", launch);
  $("#plan").addEventListener("click", estimateMemory);
  fillMethods();
}

function fillMethods() {
  const stage = $("#f-stage").value, sel = $("#f-method"), old = sel.value || SCHEMA.default_method;
  sel.replaceChildren();
  for (const [name, m] of Object.entries(SCHEMA.methods))
    if (m.stages.includes(stage)) sel.append(el("option", {value: name, text: name}));
  sel.value = [...sel.options].some(o => o.value === old) ? old : sel.options[0].value;
  const info = SCHEMA.stages[stage];
  $("#stage-help").textContent = `records: ${info.records} · model: ${info.model_kind} · metrics: ${info.metrics.join(", ")}`;
  document.querySelectorAll("details[data-stage]").forEach(d => d.hidden = d.dataset.stage && d.dataset.stage !== stage);
  methodFields();
}

function methodFields() {
  const m = SCHEMA.methods[$("#f-method").value];
  const pairs = m.pairs_lr ? `; preference, RL and reward stages: ${m.pairs_lr}` : "";
  $("#method-help").textContent = `${m.help} (default learning rate: ${m.default_lr}${pairs})`;
  $("#method-fields").replaceChildren(...m.fields.map(fieldInput));
}

function formValues() {
  const out = {};
  document.querySelectorAll("#form [data-key]").forEach(i => {
    const box = i.closest("details[data-stage]");
    if (box && box.hidden) return;
    if (i.value.trim() !== "") out[i.dataset.key] = i.value.trim();
  });
  return out;
}

function changed() { clearTimeout(validateTimer); validateTimer = setTimeout(validate, 300); }

function showErrors(errors) {
  document.querySelectorAll("#form .err").forEach(e => { e.textContent = ""; });
  document.querySelectorAll("#form .bad").forEach(e => e.classList.remove("bad"));
  for (const [key, msg] of Object.entries(errors || {})) {
    const box = document.querySelector(`#form .err[data-for="${key}"]`) || $("#form-error");
    box.textContent = (box.textContent ? box.textContent + "\n" : "") + (box.id === "form-error" && key ? `${key}: ` : "") + msg;
    const input = document.querySelector(`#form [data-key="${key}"]`);
    if (input) input.classList.add("bad");
  }
}

async function validate() {
  const seq = ++CHECKS, {data} = await api("/api/validate", formValues());
  if (seq !== CHECKS) return data;  // a newer check is under way (answers may come out of order): it decides
  showErrors(data.errors || {"": data.error});
  $("#yaml").textContent = data.yaml || ""; $("#command").textContent = data.command || "";
  $("#launch").disabled = !data.ok || !DATA_OK;
  $("#launch-state").textContent = !data.ok ? `${Object.keys(data.errors || {}).length} problem(s)`
    : (DATA_OK ? "valid" : "config valid; fix the data errors first");
  return data;
}

function checkDataSoon() { clearTimeout(dataTimer); dataTimer = setTimeout(checkData, 400); }

async function checkData() {
  const v = formValues(), box = $("#data-view");
  if (!v["data.train"]) return;
  box.textContent = "checking ...";
  DATA_OK = false;
  const {status, data} = await api("/api/data", {path: v["data.train"], stage: v.stage || "sft", format: v["data.format"],
    text_field: v["data.text_field"], label_field: v["data.label_field"], text_pair_field: v["data.text_pair_field"]});
  if (status !== 200) { box.replaceChildren(el("div", {class: "err", text: data.error})); return; }
  const head = el("p", {id: "data-summary", text: `${data.records} records, ${data.valid} usable · format: ${data.format || "—"}` +
    ` · ${data.errors} error(s), ${data.warnings} warning(s)`});
  const rows = el("table", {class: "preview"}, el("tr", {}, el("th", {text: "line"}), el("th", {text: "first rows"})));
  for (const r of data.rows) rows.append(el("tr", {}, el("td", {text: r.line ?? ""}),
    el("td", {class: r.problem ? "bad" : "", text: r.problem || JSON.stringify(r.data)})));
  const problems = el("ul", {id: "data-problems"});
  for (const f of data.findings) {
    const li = el("li", {class: f.severity}, el("b", {text: `${f.severity} · ${f.kind} (${f.count}): `}), f.description);
    const ul = el("ul");
    const short = t => t.split(data.path).join(data.path.split("/").pop());
    f.examples.slice(0, 5).forEach(e => ul.append(el("li", {class: "loc", "data-line": e.line ?? "", text: short(e.text)})));
    if (f.count > 5) ul.append(el("li", {class: "muted", text: `... ${f.count - 5} more`}));
    li.append(ul);
    problems.append(li);
  }
  box.replaceChildren(head, problems, rows);
  box.className = data.ok ? "" : "has-errors";
  DATA_OK = data.ok;
  validate();
}

async function launch() {
  $("#launch").disabled = true;
  const {status, data} = await api("/api/runs", formValues());
  if (status !== 200) { showErrors(data.errors || {"": data.error}); $("#launch-state").textContent = "refused"; return; }
  CURRENT = data.run.name;
  show("runs");
}

// ---- runs ----------------------------------------------------------------------------------------------------
async function refreshRuns() {
  const {status, data} = await api("/api/runs");
  if (status !== 200) return;
  RUNS = data.runs || [];
  const body = $("#runs-table tbody");
  body.replaceChildren(...RUNS.map(r => {
    const tr = el("tr", {"data-run": r.name, class: r.name === CURRENT ? "sel" : ""},
      el("td", {text: r.name}), el("td", {class: `status ${r.status}`, text: r.status}),
      el("td", {text: `${r.stage || "?"} / ${r.method || "?"}`}),
      el("td", {text: `${r.step}${r.total_steps ? " / " + r.total_steps : ""}`}), el("td", {text: fmt(r.loss)}),
      el("td", {text: fmt(r.tokens_per_second, 0)}), el("td", {text: eta(r.eta_seconds)}));
    tr.addEventListener("click", () => { CURRENT = r.name; paneFollows(); refreshRuns(); });  // results.js
    return tr;
  }));
  COMBINED = (await api("/api/combine")).data.combined || [];  // combined models (results.js), usable as model:
  const models = RUNS.filter(r => r.status === "finished" && SCHEMA.stages[r.stage]?.chainable)  // runs to continue
    .map(r => `${SCHEMA.runs_dir}/${r.name}`).concat(combinedModels());
  $("#models").replaceChildren(...[...SCHEMA.aliases, ...models].map(v => el("option", {value: v})));
  fillCompare(); fillChatRuns();
  if (CURRENT) await showRun(CURRENT);
}

async function showRun(name) {
  const {status, data} = await api(`/api/runs/${encodeURIComponent(name)}`);
  const box = $("#run-detail");
  if (name !== CURRENT) return;  // another row was picked meanwhile: never draw (and enable) a run not picked
  if (status !== 200) { box.textContent = data.error; box.dataset.key = ""; return; }
  const key = `${name}|${data.status}`;
  if (box.dataset.key !== key) renderRun(box, name, data);  // same run, same status: keep inputs and open panels
  box.dataset.key = key;
  const pct = data.total_steps ? Math.min(100, 100 * data.step / data.total_steps) : 0;
  box.querySelector(".bar div").style.width = `${pct}%`;
  for (const [k, v] of [["status", data.status], ["step", `${data.step}${data.total_steps ? " / " + data.total_steps : ""}`],
                        ["loss", fmt(data.loss)], ["tokenss", fmt(data.tokens_per_second, 0)], ["ETA", eta(data.eta_seconds)],
                        ["checkpoints", data.checkpoints.join(", ") || "—"],
                        ["command", data.command || "(started outside the studio)"]])
    $(`#run-${k}`).textContent = v;
  // periodic evals (training.eval_steps): live from eval_log.jsonl while training, then metrics.json's
  const evals = (data.metrics?.evals || data.evals || []).filter(e => e.loss != null);
  lineChart($("#chart"), [{name: "train loss", color: "#2563eb", points: data.points.map(p => [p.step, p.loss])},
                          ...(evals.length ? [{name: "eval loss", color: "#dc2626", points: evals.map(e => [e.step, e.loss])}] : [])],
            {yLabel: "loss"});
  $("#run-log").textContent = data.log;
}

function renderRun(box, name, data) {
  box.className = "";
  box.dataset.run = name;  // the buttons below act on `name`: paneFollows() disables them when another is picked
  const buttons = el("div", {class: "actions"});
  if (data.status === "running" || data.status === "queued") {
    const b = el("button", {id: "stop", text: data.status === "queued" ? "Cancel" : "Stop (save a checkpoint)"});
    b.addEventListener("click", async () => { if (!paneIs(name)) return;
      const r = await api(`/api/runs/${name}/stop`, {}); if (r.status !== 200) alert(r.data.error); refreshRuns(); });
    buttons.append(b);
  }
  if (["stopped", "failed", "incomplete", "cancelled"].includes(data.status)) {
    const b = el("button", {id: "resume", text: "Resume from the last checkpoint"});
    const steps = el("input", {id: "resume-steps", size: 8, placeholder: `max_steps ${data.max_steps ?? ""}`,
                               title: "optional: a new training.max_steps (train longer or end sooner)"});
    b.addEventListener("click", async () => { if (!paneIs(name)) return;
      const r = await api(`/api/runs/${name}/resume`, {max_steps: steps.value.trim() || null});
      if (r.status !== 200) alert(r.data.error);
      refreshRuns();
    });
    buttons.append(b, steps);
  }
  const stats = el("dl", {class: "stats"});
  for (const k of ["status", "step", "loss", "tokens/s", "ETA", "checkpoints", "command"])
    stats.append(el("dt", {text: k}), el("dd", {id: `run-${k.replace(/\W/g, "")}`}));
  const parts = [el("h2", {text: name}), el("div", {class: "bar"}, el("div")), stats, buttons, el("div", {id: "chart"})];
  if (data.error) parts.push(el("pre", {class: "err", text: data.error}));
  if (data.metrics && data.metrics.train) parts.push(el("h3", {text: "metrics"}), metricsTable([data]));
  if (data.status === "finished") parts.push(...finishedPanels(name, data));  // predict, merge, export (results.js)
  parts.push(el("details", {}, el("summary", {text: "config.yaml"}), el("pre", {text: data.config})));
  parts.push(el("details", {}, el("summary", {text: "process output"}), el("pre", {id: "run-log"})));
  box.replaceChildren(...parts);
}

// ---- compare -------------------------------------------------------------------------------------------------
function metricsTable(runs) {
  const rows = [["eval_before", "loss"], ["eval_after", "loss"], ["eval_after", "perplexity"], ["eval_after", "exact_match"],
                ["train", "tokens_per_second"], ["train", "peak_rss_mb"], ["train", "wall_seconds"],
                ["train", "trainable_params"], ["train", "total_params"]];
  const t = el("table", {class: "metrics"}, el("tr", {}, el("th", {text: "metric"}), ...runs.map(r => el("th", {text: r.name}))));
  for (const [block, key] of rows) {
    if (!runs.some(r => r.metrics?.[block]?.[key] !== undefined)) continue;
    t.append(el("tr", {}, el("td", {text: `${block}.${key}`}), ...runs.map(r => el("td", {text: fmt(r.metrics?.[block]?.[key])}))));
  }
  return t;
}

function fillCompare() {
  for (const id of ["#cmp-a", "#cmp-b"]) {
    const sel = $(id), old = sel.value;
    sel.replaceChildren(el("option", {value: "", text: "—"}), ...RUNS.map(r => el("option", {value: r.name, text: r.name})));
    sel.value = old;
  }
}

async function compare() {
  const names = [$("#cmp-a").value, $("#cmp-b").value].filter(Boolean);
  if (names.length < 2) return;
  const runs = await Promise.all(names.map(async n => (await api(`/api/runs/${encodeURIComponent(n)}`)).data));
  const chart = el("div", {id: "compare-chart"});
  lineChart(chart, runs.map((r, i) => ({name: r.name, color: ["#2563eb", "#dc2626"][i], points: r.points.map(p => [p.step, p.loss])})));
  $("#compare-view").className = "";
  $("#compare-view").replaceChildren(metricsTable(runs), chart, el("h3", {text: "generations (greedy, after training)"}),
                                     generationsTable(runs), reportsSideBySide(runs), combinePanel(runs));
}

// ---- start ---------------------------------------------------------------------------------------------------
async function main() {
  SCHEMA = (await api("/api/schema")).data;
  $("#where").textContent = `runs: ${SCHEMA.runs_dir}`;
  buildForm();
  addPickers();  // picker.js
  document.querySelectorAll(".tab").forEach(b => b.addEventListener("click", () => show(b.dataset.tab)));
  ["#cmp-a", "#cmp-b"].forEach(s => $(s).addEventListener("change", compare));
  setupChat();  // panels.js
  show((location.hash || "#new").slice(1));
  setInterval(() => { if (!$("#tab-runs").hidden) refreshRuns(); }, 1000);
  validate();
  document.body.dataset.ready = "1";
}
main();
