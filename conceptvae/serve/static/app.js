// conceptvae editor: one page over the /api endpoints; no framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDER_MIN = -3, SLIDER_MAX = 3, SLIDER_STEP = 0.05;

const state = {
  photo: null,        // the upload's info: id, size, faces
  face: 0,
  values: {},         // vector name -> strength (0 = unchanged)
  expr: "",           // the expression box, when it parses
  current: "Smiling", // the slider last moved: its GIF
  vectors: [],
  beforeURL: null,
  afterURL: null,
};

// ------------------------------------------------------------------ latest-wins previews
// At most one edit request is in flight. A change while it runs only marks the edit dirty
// (overwriting any earlier mark), and the newest state is sent when the request returns: no
// queue of stale frames. Each request carries a sequence number and a response is shown only if
// it is newer than the one on screen, so an older edit never replaces a newer one.
let seq = 0, shown = 0, inflight = false, dirty = false, generation = 0, controller = null;

function editBody(extra) {
  const strengths = {};
  for (const [k, v] of Object.entries(state.values)) if (v !== 0) strengths[k] = v;
  return Object.assign({
    face: state.face,
    edit: state.expr || null,
    strengths,
    blend: $("blend").value,
    refine: Math.max(0, parseInt($("refine").value || "0", 10) || 0),
  }, extra || {});
}

function requestPreview() {
  if (!state.photo) return;
  dirty = true;
  if (!inflight) pump();
}

async function pump() {
  while (dirty && state.photo) {
    dirty = false;
    inflight = true;
    const mine = ++seq, gen = generation, started = performance.now();
    controller = new AbortController();
    try {
      const r = await fetch(`/api/photos/${state.photo.id}/edit`, {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(editBody({size: "preview"})),
        signal: controller.signal,
      });
      if (gen !== generation) continue;  // another photo since
      if (!r.ok) { showError(await errorText(r)); continue; }
      const blob = await r.blob();
      if (gen !== generation || mine <= shown) continue;
      shown = mine;
      setAfter(URL.createObjectURL(blob), mine);
      showError(null);
      let warnings = [];
      try { warnings = JSON.parse(r.headers.get("X-Warnings") || "[]"); } catch (e) { /* none */ }
      showEditWarnings(warnings);
      const label = r.headers.get("X-Edit") || "no edit";
      $("status").textContent = `${label} \u00b7 ${Math.round(performance.now() - started)} ms`;
    } catch (e) {
      if (e.name !== "AbortError") showError(`request failed: ${e.message}`);
    } finally {
      inflight = false;
    }
  }
}

function setAfter(url, mine) {
  if (state.afterURL) URL.revokeObjectURL(state.afterURL);
  state.afterURL = url;
  const img = $("photo");
  img.dataset.seq = String(mine);
  if (!$("before").checked) img.src = url;
}

// ------------------------------------------------------------------ messages

async function errorText(r) {
  try {
    const j = await r.json();
    return j.error || `HTTP ${r.status}`;
  } catch (e) {
    return `HTTP ${r.status}`;
  }
}

function showError(text) {
  const el = $("error");
  el.hidden = !text;
  el.textContent = text || "";
}

let editWarnings = [];
function showEditWarnings(list) { editWarnings = list; renderWarnings(); }

function renderWarnings() {
  const face = state.photo && state.photo.faces[state.face];
  const all = [...((face && face.warnings) || []), ...editWarnings];
  const el = $("warning");
  el.hidden = all.length === 0;
  el.textContent = all.join(" \u2022 ");
}

// ------------------------------------------------------------------ photos

async function upload(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("align", $("whole").checked ? "false" : "true");
  await loadPhoto(fetch("/api/photos", {method: "POST", body: form}), `uploading ${file.name}\u2026`);
}

async function loadPhoto(request, message) {
  $("status").textContent = message;
  showError(null);
  let r;
  try { r = await request; } catch (e) { showError(`upload failed: ${e.message}`); return; }
  if (!r.ok) { showError(await errorText(r)); $("status").textContent = ""; return; }
  const info = await r.json();
  generation += 1;
  if (controller) controller.abort();
  state.photo = info;
  state.face = 0;
  editWarnings = [];
  const b = await fetch(`/api/photos/${info.id}/image?size=preview`);
  if (state.beforeURL) URL.revokeObjectURL(state.beforeURL);
  state.beforeURL = URL.createObjectURL(await b.blob());
  if (state.afterURL) URL.revokeObjectURL(state.afterURL);
  state.afterURL = null;
  $("photo").src = state.beforeURL;
  $("photo").dataset.seq = "0";
  shown = seq;
  $("frame").hidden = false;
  $("hint").hidden = true;
  $("drop").classList.remove("empty");
  $("download").disabled = false;
  $("gif").disabled = false;
  const n = info.faces.length;
  $("status").textContent = `${info.name}: ${info.width} \u00d7 ${info.height}, ${n} face${n === 1 ? "" : "s"}`;
  drawBoxes();
  renderWarnings();
  if (hasEdit()) requestPreview();
}

function hasEdit() {
  return Boolean(state.expr) || Object.values(state.values).some((v) => v !== 0);
}

function drawBoxes() {
  const holder = $("boxes");
  holder.textContent = "";
  const info = state.photo;
  const img = $("photo");
  if (!info || !img.clientWidth) return;
  const k = img.clientWidth / info.width;
  info.faces.forEach((f, i) => {
    const [x, y, w, h] = f.box;
    const d = document.createElement("div");
    d.className = "face-box" + (i === state.face ? " selected" : "");
    d.dataset.index = String(i);
    d.title = `face ${i}: reconstruction ${f.psnr.toFixed(1)} dB${f.far ? " (far from the training data)" : ""}`;
    Object.assign(d.style, {left: `${x * k}px`, top: `${y * k}px`, width: `${w * k}px`, height: `${h * k}px`});
    const tag = document.createElement("span");
    tag.textContent = String(i);
    d.appendChild(tag);
    d.addEventListener("click", () => selectFace(i));
    holder.appendChild(d);
  });
}

function selectFace(i) {
  if (!state.photo || i === state.face) return;
  state.face = i;
  drawBoxes();
  renderWarnings();
  requestPreview();
}

// ------------------------------------------------------------------ sliders

function fmt(v) { return (v > 0 ? "+" : "") + v.toFixed(2); }

function buildSliders(vectors) {
  const holder = $("sliders");
  holder.textContent = "";
  for (const v of vectors) {
    state.values[v.name] = 0;
    const row = document.createElement("div");
    row.className = "slider-row";
    row.dataset.name = v.name;
    const name = document.createElement("div");
    name.className = "name";
    name.append(v.name.replace(/_/g, " "));
    if (v.recommended) {
      const rec = document.createElement("span");
      rec.className = "rec";
      rec.textContent = `rec. ${fmt(v.recommended.add)} / ${fmt(v.recommended.remove)}`;
      const pct = (s) => (s && s.success_at_1 != null ? `${Math.round(100 * s.success_at_1)}%` : "?");
      rec.title = `calibrated (${v.scale}): +1 adds it to ${pct(v.add)} of held-out faces, -1 removes it from ${pct(v.remove)}`;
      name.appendChild(rec);
    }
    if (v.problems && v.problems.length) {
      const flag = document.createElement("span");
      flag.className = "flag";
      flag.textContent = "\u26a0";
      flag.title = v.problems.join("\n");
      name.appendChild(flag);
    }
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min: SLIDER_MIN, max: SLIDER_MAX, step: SLIDER_STEP, value: 0});
    input.setAttribute("aria-label", v.name);
    if (v.recommended) input.setAttribute("list", "ticks");
    const out = document.createElement("output");
    out.textContent = "0";
    const reset = document.createElement("button");
    reset.type = "button";
    reset.className = "reset";
    reset.title = `reset ${v.name}`;
    reset.textContent = "\u21ba";
    input.addEventListener("input", () => setValue(v.name, parseFloat(input.value), false));
    reset.addEventListener("click", () => setValue(v.name, 0, true));
    row.append(name, input, out, reset);
    holder.appendChild(row);
  }
  const ticks = document.createElement("datalist");
  ticks.id = "ticks";
  for (const t of [-1, 0, 1]) {
    const o = document.createElement("option");
    o.value = String(t);
    ticks.appendChild(o);
  }
  holder.appendChild(ticks);
}

function setValue(name, value, moveInput) {
  state.values[name] = Math.abs(value) < 1e-9 ? 0 : value;
  const row = document.querySelector(`.slider-row[data-name="${CSS.escape(name)}"]`);
  if (row) {
    if (moveInput) row.querySelector("input").value = String(value);
    row.querySelector("output").textContent = value === 0 ? "0" : fmt(value);
    row.classList.toggle("changed", value !== 0);
    document.querySelectorAll(".slider-row.active").forEach((r) => r.classList.remove("active"));
    row.classList.add("active");
  }
  state.current = name;
  $("gif-name").textContent = name;
  requestPreview();
}

function filterSliders() {
  const q = $("filter").value.trim().toLowerCase().replace(/[\s_]+/g, "_");
  document.querySelectorAll(".slider-row").forEach((row) => {
    row.hidden = Boolean(q) && !row.dataset.name.toLowerCase().includes(q);
  });
}

// ------------------------------------------------------------------ the expression box

let exprTimer = null, exprSeq = 0;
function exprChanged() {
  clearTimeout(exprTimer);
  exprTimer = setTimeout(checkExpr, 250);
}

async function checkExpr() {
  const text = $("expr").value.trim();
  const mine = ++exprSeq;
  const err = $("expr-error"), ok = $("expr-ok");
  if (!text) {
    err.hidden = true; ok.hidden = true; $("expr").classList.remove("bad");
    if (state.expr) { state.expr = ""; requestPreview(); }
    return;
  }
  const r = await fetch("/api/parse", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({edit: text}),
  });
  if (mine !== exprSeq) return;  // typed on since
  if (!r.ok) {
    err.textContent = await errorText(r);
    err.hidden = false; ok.hidden = true; $("expr").classList.add("bad");
    return;  // the last good expression stays applied
  }
  const j = await r.json();
  err.hidden = true; $("expr").classList.remove("bad");
  ok.textContent = `= ${j.edit || "no change"}`;
  ok.hidden = false;
  state.expr = text;
  requestPreview();
}

// ------------------------------------------------------------------ downloads

async function download(url, body, fallbackName) {
  showError(null);
  $("status").textContent = "preparing the download\u2026";
  const r = await fetch(url, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  if (!r.ok) { showError(await errorText(r)); $("status").textContent = ""; return; }
  const blob = await r.blob();
  const m = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = m ? m[1] : fallbackName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  $("status").textContent = `downloaded ${a.download}`;
}

function downloadPhoto() {
  if (!state.photo) return;
  download(`/api/photos/${state.photo.id}/edit`, editBody({size: "full", format: "auto"}), "edited.png");
}

function downloadGif() {
  if (!state.photo) return;
  const name = state.current;
  const top = Math.max(1, Math.abs(state.values[name] || 0));
  const body = editBody({sweep: `${name}=${-top}:${top}:9`});
  delete body.strengths[name];
  download(`/api/photos/${state.photo.id}/sweep`, body, `${name}_sweep.gif`);
}

// ------------------------------------------------------------------ wiring

function showBefore(on) {
  const img = $("photo");
  $("frame").classList.toggle("before", on);
  img.dataset.state = on ? "before" : "after";
  img.src = on ? state.beforeURL : (state.afterURL || state.beforeURL);
}

async function start() {
  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
  $("random").addEventListener("click", () => loadPhoto(
    fetch("/api/random", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({kind: "prior"})}),
    "drawing a face\u2026"));
  $("synth").addEventListener("click", () => loadPhoto(
    fetch("/api/random", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({kind: "synthface"})}),
    "rendering a SynthFace\u2026"));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("photo").addEventListener("load", drawBoxes);
  window.addEventListener("resize", drawBoxes);
  $("before").addEventListener("change", (e) => showBefore(e.target.checked));
  $("filter").addEventListener("input", filterSliders);
  $("reset-all").addEventListener("click", () => {
    for (const name of Object.keys(state.values)) {
      if (state.values[name] !== 0) setValue(name, 0, true);
    }
    $("expr").value = "";
    checkExpr();
    requestPreview();
  });
  $("expr").addEventListener("input", exprChanged);
  $("blend").addEventListener("change", requestPreview);
  $("refine").addEventListener("change", requestPreview);
  $("download").addEventListener("click", downloadPhoto);
  $("gif").addEventListener("click", downloadGif);

  const r = await fetch("/api/vectors");
  if (!r.ok) { showError(await errorText(r)); return; }
  const info = await r.json();
  $("model").textContent = `${info.model} \u00b7 ${info.vectors.length} vectors`;
  state.vectors = info.vectors;
  buildSliders(info.vectors);
  document.body.dataset.ready = "1";
}

start();
