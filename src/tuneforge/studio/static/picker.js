// tuneforge studio: files without typing paths. A "browse" button beside data.train, data.eval and model opens a
// picker over the studio's allowed folders (GET /api/files lists one folder; a folder outside them is refused by
// the server), and data files can be uploaded into RUNS_DIR/data (POST /api/upload, size-capped by the server).
// Uses app.js's $, el, api and checkDataSoon / changed.
"use strict";

const PICK = {input: null, dirs: false};

function addPickers() {
  const dialog = el("dialog", {id: "picker"},
    el("div", {class: "picker-head"}, el("b", {id: "picker-dir"}), el("button", {id: "picker-close", type: "button", class: "small", text: "close"})),
    el("div", {id: "picker-error", class: "err"}), el("ul", {id: "picker-list"}),
    el("div", {class: "actions", id: "picker-use-row"}, el("button", {id: "picker-use", type: "button", text: "use this folder"})),
    el("div", {class: "actions", id: "picker-upload-row"}, el("span", {text: "or upload a data file into the runs folder:"}),
       el("input", {id: "upload-file", type: "file", accept: ".jsonl,.ndjson,.json,.csv,.parquet"}),
       el("button", {id: "upload", type: "button", text: "Upload"})));
  document.body.append(dialog);
  $("#picker-close").addEventListener("click", () => dialog.close());
  $("#picker-use").addEventListener("click", () => pick($("#picker-dir").dataset.path));
  $("#upload").addEventListener("click", upload);
  for (const key of ["model", "data.train", "data.eval"]) {
    const input = document.querySelector(`#form [data-key="${key}"]`);
    if (!input) continue;
    const b = el("button", {type: "button", class: "small browse", "data-for": key, text: "browse"});
    b.addEventListener("click", () => openPicker(input, key === "model"));
    const row = el("span", {class: "inline"});
    input.replaceWith(row);
    row.append(input, b);
  }
}

async function openPicker(input, dirs) {
  Object.assign(PICK, {input, dirs});
  $("#picker-use-row").hidden = !dirs;
  $("#picker-upload-row").hidden = dirs;
  $("#picker").showModal();
  const start = input.value.trim();  // start beside what the field names, if the server lets us
  const parent = start.includes("/") ? start.slice(0, start.lastIndexOf("/")) || "/" : "";
  if (!parent || !(await browse(dirs && start ? start : parent))) await browse("");
}

async function browse(dir) {
  const {status, data} = await api(`/api/files${dir ? "?dir=" + encodeURIComponent(dir) : ""}`);
  $("#picker-error").textContent = status === 200 ? "" : data.error;
  if (status !== 200) return false;
  $("#picker-dir").textContent = data.dir || "allowed folders";
  $("#picker-dir").dataset.path = data.dir || "";
  $("#picker-use").disabled = !data.dir;
  const items = [];
  if (data.dir) items.push(entry({name: "..", path: data.parent || "", kind: "dir"}));
  for (const e of data.entries) if (e.kind === "dir" || !PICK.dirs) items.push(entry(e));
  if (data.truncated) items.push(el("li", {class: "muted", text: "(more entries not shown)"}));
  $("#picker-list").replaceChildren(...items);
  return true;
}

function entry(e) {
  const size = e.size == null ? "" : e.size < 1e6 ? ` (${(e.size / 1e3).toFixed(1)} kB)` : ` (${(e.size / 1e6).toFixed(1)} MB)`;
  const li = el("li", {class: `${e.kind}${e.data ? " data" : ""}`, "data-name": e.name, "data-path": e.path,
                      text: e.name + (e.kind === "dir" && e.name !== ".." ? "/" : "") + size});
  li.addEventListener("click", () => e.kind === "dir" ? browse(e.path) : pick(e.path));
  return li;
}

function pick(path) {
  if (!path) return;
  PICK.input.value = path;
  PICK.input.dispatchEvent(new Event("input", {bubbles: true}));  // the form checks it (and previews data) as if typed
  $("#picker").close();
}

async function upload() {
  const file = $("#upload-file").files[0];
  if (!file) { $("#picker-error").textContent = "choose a file first"; return; }
  $("#upload").disabled = true;
  $("#picker-error").textContent = `uploading ${file.name} ...`;
  let r, data;
  try {
    r = await fetch(`/api/upload?name=${encodeURIComponent(file.name)}`, {method: "POST", body: file,
                                                                       headers: {"Content-Type": "application/octet-stream"}});
    data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  } catch (e) { data = {error: "the studio is not reachable"}; }
  $("#upload").disabled = false;
  if (!r || r.status !== 200) { $("#picker-error").textContent = data.error; return; }
  pick(data.path);
}
