// tuneforge studio: what the run pane's buttons act on, and what a finished run offers beyond training: predict
// (classifiers; panels.js), a verified merge, a verified GGUF export and, on the compare tab, several LoRA runs
// combined into one verified model. Each job is an ordinary tuneforge process (studio/jobs.py); the page shows the
// verification its command wrote, or the process output when it failed. Uses app.js's $, el, api, CURRENT, SCHEMA.
"use strict";

// ---- the run pane acts on the run it shows, and only once it shows the run that was picked -------------------------
function paneIs(name) {
  const box = $("#run-detail");
  return CURRENT === name && box.dataset.run === name && !box.classList.contains("stale");
}

function paneFollows() {  // a row was picked: until the pane is drawn for it, nothing in the old pane can be clicked
  const box = $("#run-detail");
  if (box.dataset.run === CURRENT) return;
  box.dataset.key = "";  // drawn anew on the next answer, even if the picked run is the one shown before
  box.classList.add("stale");
  box.querySelectorAll("button, input, select").forEach(b => { b.disabled = true; });
}

function finishedPanels(name, data) {
  const panels = [], method = SCHEMA.methods[data.method] || {}, stage = SCHEMA.stages[data.stage] || {};
  if (stage.model_kind === "classifier") panels.push(predictPanel(name));
  if (method.mergeable) panels.push(mergePanel(name));
  if (stage.generates && (method.mergeable || method.saves_whole_model)) panels.push(exportPanel(name));
  return panels;
}

// A job's button, its status line (polled while it runs) and the verification it wrote.
function jobPanel({id, title, button, url, body, describe, run, once, controls}) {
  const state = el("div", {id: `${id}-state`, class: "job"}), go = el("button", {id, type: "button", text: button});
  let timer = null;
  const show = data => {
    state.className = `job ${data.status}`;
    state.textContent = data.status === "done" ? describe(data.report, data)
      : data.status === "running" ? `running: ${data.command} ...`
      : data.status === "failed" ? `failed: ${data.command}\n${data.log}` : "";
    go.disabled = data.status === "running" || (once && data.status === "done") || (run && !paneIs(run));
    clearTimeout(timer);
    if (data.status === "running") timer = setTimeout(poll, 1000);
  };
  const poll = async () => {
    const r = await api(url);
    if (r.status === 200 && (state.isConnected || !timer)) show(r.data);
  };
  go.addEventListener("click", async () => {
    if (run && !paneIs(run)) return;
    go.disabled = true;
    const r = await api(url, body ? body() : {});
    if (r.status === 200) show(r.data);
    else { state.className = "job failed"; state.textContent = r.data.error; go.disabled = false; }
  });
  poll();
  return el("div", {class: id}, el("h3", {text: title}), el("div", {class: "actions"}, ...(controls || []), go), state);
}

function logitDiff(r) {  // the figure that decided (fp64 where the fp32 one was over the bound: models/verify.py)
  const fp64 = r.max_abs_logit_diff_fp64;
  return fp64 == null ? `max |logit diff| ${r.max_abs_logit_diff.toExponential(2)} <= ${r.atol}`
    : `max |logit diff| ${fp64.toExponential(2)} <= ${r.atol} in fp64 (fp32: ${r.max_abs_logit_diff.toExponential(2)})`;
}

function mergePanel(name) {
  return jobPanel({id: "merge", title: "merge the adapter into a standalone model", button: "Merge (verified)",
    url: `/api/runs/${encodeURIComponent(name)}/merge`, run: name, once: true,
    describe: r => `merged into ${name}/merged: ${logitDiff(r)} (reloaded from disk, ${r.probe_prompts} probe prompts)`});
}

function ggufCheck(label, c, prompts) {
  if (!c) return `${label}: not checked (not installed)`;
  return `${label}: mean KL ${c.mean_kl.toExponential(2)} <= ${c.kl_tolerance} nats/token, top-1 agreement ` +
         `${(100 * c.top1_agreement).toFixed(1)}%, greedy output identical on ${c.greedy_identical} / ${prompts} prompts`;
}

function exportPanel(name) {
  const quant = el("select", {id: "export-quant"}, el("option", {value: "f16", text: "f16"}),
                   el("option", {value: "q8_0", text: "q8_0 (smaller, looser)"}));
  return jobPanel({id: "export", title: "export as one GGUF file (llama.cpp, Ollama, LM Studio)",
    button: "Export GGUF (verified)", url: `/api/runs/${encodeURIComponent(name)}/export`, run: name,
    controls: [quant], body: () => ({quant: quant.value}),
    describe: (r, data) => `wrote ${data.result.replace(/\.json$/, "")} (${r.quant}, ${(r.bytes / 1e6).toFixed(1)} MB): ` +
      `${r.architecture}, ${r.tensors} tensors, vocabulary ${r.vocabulary}, chat template ` +
      `${r.chat_template_embedded ? "embedded" : "none"}\n${ggufCheck("transformers", r.transformers_gguf, r.probe_prompts)}` +
      `\n${ggufCheck("llama.cpp", r.llama_cpp, r.probe_prompts)}`});
}

// ---- combine the compared runs (LoRA, same base) into one model: tuneforge merge --combine ---------------------------
function combinedModels() {  // finished combinations, offered as model: in the new-run form
  return COMBINED.filter(c => c.status === "done").map(c => c.result.replace(/\/merge\.json$/, ""));
}

function describeCombined(r) {
  return `${r.runs.map(p => p.split("/").pop()).join(" + ")} (${r.how}, weights ${r.weights.join(", ")}): ` +
         `${logitDiff(r)} (reloaded from disk)`;
}

function combinePanel(runs) {
  const names = runs.map(r => r.name);
  const name = el("input", {id: "combine-name", size: 18, value: names.map(n => n.split("/").pop()).join("+").replace(/[^\w.-]/g, "_")});
  const how = el("select", {id: "combine-how"});  // peft's combination types, as tuneforge merge --combine --how takes
  const weights = el("input", {id: "combine-weights", size: 10, placeholder: "equal"});
  const list = el("div", {id: "combined"});
  const draw = () => list.replaceChildren(...COMBINED.map(c => el("div", {class: `job ${c.status}`, "data-name": c.name,
    text: `${c.name}: ` + (c.status === "done" ? describeCombined(c.report) : c.status === "running"
      ? `running: ${c.command} ...` : `${c.status}\n${c.log}`)})));
  const poll = async () => {
    const {data} = await api("/api/combine");
    COMBINED = data.combined || COMBINED;
    if (!how.options.length && data.hows) how.replaceChildren(...data.hows.map(h => el("option", {value: h, text: h})));
    draw();
    if (list.isConnected && COMBINED.some(c => c.status === "running")) setTimeout(poll, 1000);
  };
  const go = el("button", {id: "combine", type: "button", text: "Combine (verified)"}), state = el("span", {class: "err"});
  go.addEventListener("click", async () => {
    const r = await api("/api/combine", {runs: names, name: name.value.trim(), how: how.value, weights: weights.value.trim()});
    state.textContent = r.status === 200 ? "" : r.data.error;
    poll();
  });
  poll();
  return el("div", {class: "combine"}, el("h3", {text: "combine these runs into one model (LoRA runs of the same base)"}),
    el("div", {class: "actions"}, el("label", {}, "name ", name), el("label", {}, "how ", how),
       el("label", {}, "weights ", weights), go, state), list);
}
