// The tfguess page: pick, drop or photograph images (or a whole folder), see the model's labels.
"use strict";
const SHOWN = 3;        // labels shown per image
const PARALLEL = 2;     // requests in flight at once
const PART_OVERHEAD = 1024;  // multipart headers of one file, bytes (a generous bound)
const IMAGE_TYPES = /\.(jpe?g|png|gif|bmp|webp|tiff?|heic|heif|avif)$/i;

const pct = (v) => (100 * v).toFixed(1) + "\u00a0%";   // never "98.3 / %" on two lines
const mb = (bytes) => (bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0) + " MB";

// What the server accepts (GET /api/model publishes it); the page builds its requests by it.
let limits = { max_upload_bytes: 32 * 2 ** 20, max_files: 16 };
let labels = [];
const rows = [];   // one per image, in the order chosen: {n, name, tile, result}

function unknownLabel() {
  return labels.includes("unknown") ? "_unknown" : "unknown";
}

function minScore() {
  return Number($("min-score").value);
}

async function loadCard() {
  const facts = $("card-facts");
  try {
    const r = await fetch("/api/model");
    const m = await r.json();
    if (!r.ok) throw new Error(m.detail || `HTTP ${r.status}`);
    if (m.limits) limits = m.limits;
    labels = m.labels || [];
    $("model-name").textContent = m.name;
    $("report-link").hidden = !m.report;
    $("review-link").hidden = !m.review;
    $("inbox-link").hidden = !m.inbox;
    showNextStep(m);
    const rows = [
      ["labels", labels.length ? labels.join(", ") : "none yet"],
      ["backbone", m.backbone ? `${m.backbone.name} (${m.input_size} px, ${m.resize})` : (m.input_size ? `${m.input_size} px` : null)],
      ["mode", m.mode],
      ["test accuracy", m.test_accuracy == null ? null :
        `${pct(m.test_accuracy)} (n=${m.metrics && m.metrics.test ? m.metrics.test.n : "?"}${m.test_note ? "; " + m.test_note : ""})`],
      ["trained", m.date ? new Date(m.date).toLocaleString() : "not yet"],
      ["engine", m.engine],
      ["weights", m.digest ? m.digest.slice(0, 19) + "…" : null],
      ["uploads", `up to ${mb(m.limits.max_upload_bytes)} a photo`],
    ];
    // a fact the model does not have reads "–", never "null"
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v == null || v === "" ? "–" : String(v))]));
    if (m.report) facts.append(el("dt", {}, "report"), el("dd", {}, el("a", { href: "/report/" }, "evaluation report")));
  } catch (e) {
    facts.replaceChildren(el("dt", {}, "error"), el("dd", { class: "error-text" }, String(e.message || e)));
  }
}

// Without a model the page says how to get one, instead of offering uploads that cannot be answered.
function showNextStep(m) {
  const none = m.model === false;
  $("next-step").hidden = !none;
  $("next-inbox").hidden = !m.inbox;
  for (const id of ["drop", "controls"]) $(id).hidden = none;
}

function bars(predictions) {
  return predictions.slice(0, SHOWN).map((p) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = (100 * p.score).toFixed(1) + "%";
    return el("div", { class: "bar" }, el("span", { class: "label", title: p.label }, p.label),
      el("div", { class: "track" }, fill), el("span", { class: "score" }, pct(p.score)));
  });
}

// The label shown for a result: the best one, or "unknown" below the threshold (guess-dir --min-score).
function shownLabel(result) {
  const best = result.predictions[0];
  return best.score < minScore() ? unknownLabel() : best.label;
}

// Why a result shows "unknown": the threshold, and the best label with its own score.
function belowText(result) {
  const best = result.predictions[0];
  return `below ${Math.round(100 * minScore())}\u00a0% (best: ${best.label} ${pct(best.score)})`;
}

// Where a picture cannot be shown: the file's name and why (its error, once the server answered).
function placeholder(name, why) {
  return el("div", { class: "no-preview", role: "img", "aria-label": name },
    el("span", { class: "file" }, name), el("span", { class: "reason" }, why));
}

function render(row) {
  const { tile, result } = row;
  if (!result) return;
  tile.classList.remove("pending");
  const top = tile.querySelector(".top");
  tile.querySelectorAll(".bar").forEach((b) => b.remove());
  if (result.error) {
    tile.classList.add("error");
    top.textContent = result.error;
    const reason = tile.querySelector(".no-preview .reason");
    if (reason) reason.textContent = result.error;
    return;
  }
  const best = result.predictions[0];
  const label = shownLabel(result);
  tile.dataset.label = best.label;
  tile.dataset.score = best.score;
  tile.dataset.shown = label;
  tile.classList.toggle("unknown", label !== best.label);
  top.textContent = label;
  tile.querySelectorAll(".below, .why-button").forEach((b) => b.remove());
  if (label !== best.label) top.after(el("div", { class: "below" }, belowText(result)));
  tile.append(...bars(result.predictions), whyButton(row));
}

// "why?": the server covers each cell of the photo in turn and measures the best label's drop;
// the photo is then shown as the model sees it, the cells it depends on in red.
function whyButton(row) {
  const button = el("button", { class: "secondary why-button", type: "button" }, row.why ? "photo again" : "why?");
  button.onclick = async () => {
    row.tile.querySelectorAll(".why-note").forEach((n) => n.remove());
    if (row.why) {   // back to the photo
      row.tile.querySelector(".heat").replaceWith(row.why.photo);
      row.why = null;
      button.textContent = "why?";
      return;
    }
    button.disabled = true;
    button.textContent = "…";
    const form = new FormData();
    form.append("files", row.file, row.file.name);
    try {
      const r = await fetch("/api/explain", { method: "POST", body: form });
      const body = await r.json().catch(() => ({ detail: `HTTP ${r.status}` }));
      if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
      const photo = row.tile.querySelector("img, .no-preview");
      photo.replaceWith(el("img", { class: "heat", alt: `where the model looks for ${body.label}`, src: body.image }));
      row.why = { ...body, photo };
      row.tile.querySelector(".name").after(el("div", { class: "why-note" },
        `in red: what ${body.label} depends on (covering it lowers the score most; ${body.seconds.toFixed(1)} s)`));
      button.textContent = "photo again";
    } catch (e) {
      button.textContent = "why?";
      row.tile.querySelector(".name").after(el("div", { class: "why-note error-text" }, "no answer: " + e.message));
    }
    button.disabled = false;
  };
  return button;
}

function renderTable() {
  const body = $("results-table").tBodies[0];
  body.replaceChildren(...rows.map((row) => {
    const r = row.result;
    const cells = [el("td", { class: "num" }, String(row.n)), el("td", { class: "file" }, row.name)];
    if (!r) cells.push(el("td", { class: "muted" }, "classifying…"), el("td"), el("td"));
    else if (r.error) cells.push(el("td", { class: "error-text", colspan: "3" }, r.error));
    else if (shownLabel(r) !== r.predictions[0].label) {   // the score shown is the best label's, beside it
      cells.push(el("td", { class: "label" }, shownLabel(r), el("span", { class: "below" }, " — " + belowText(r))),
        el("td", { class: "num muted" }, "–"),
        el("td", { class: "muted" }, r.predictions.slice(1, SHOWN).map((p) => `${p.label} ${pct(p.score)}`).join(", ")));
    } else {
      cells.push(el("td", { class: "label" }, shownLabel(r)), el("td", { class: "num" }, pct(r.predictions[0].score)),
        el("td", { class: "muted" }, r.predictions.slice(1, SHOWN).map((p) => `${p.label} ${pct(p.score)}`).join(", ")));
    }
    return el("tr", {}, ...cells);
  }));
  const done = rows.some((row) => row.result);
  $("download-csv").disabled = !done;
  $("clear").disabled = !rows.length;
}

function csvCell(value) {
  let text = value == null ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;   // a spreadsheet must not run it as a formula
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv() {
  const lines = [["file", "label", "score", "best_label", "top_labels", "error", "model_digest"]];
  for (const row of rows) {
    const r = row.result;
    if (!r) continue;
    if (r.error) lines.push([row.name, "", "", "", "", r.error, ""]);
    else {
      lines.push([row.name, shownLabel(r), r.predictions[0].score.toFixed(6), r.predictions[0].label,
        r.predictions.slice(0, SHOWN).map((p) => `${p.label}:${p.score.toFixed(4)}`).join(" "), "", r.model_digest || ""]);
    }
  }
  const text = lines.map((l) => l.map(csvCell).join(",")).join("\r\n") + "\r\n";
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: "tfguess-results.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// Requests that the server accepts: at most max_files images and max_upload_bytes each.
function plan(items) {
  const budget = limits.max_upload_bytes - 4096;
  const groups = [];
  let group = [], bytes = 0;
  for (const item of items) {
    const size = item.file.size + PART_OVERHEAD + 3 * item.file.name.length;
    if (size > budget) {
      item.row.result = { error: `${mb(item.file.size)}: larger than the server accepts (${mb(budget - PART_OVERHEAD)} a photo)`, predictions: [] };
      render(item.row);
      continue;
    }
    if (group.length && (group.length >= limits.max_files || bytes + size > budget)) {
      groups.push(group);
      group = [];
      bytes = 0;
    }
    group.push(item);
    bytes += size;
  }
  if (group.length) groups.push(group);
  return groups;
}

async function send(group) {
  const form = new FormData();
  for (const { file } of group) form.append("files", file, file.name);
  let results;
  try {
    const r = await fetch("/api/predict?top_k=" + Math.max(SHOWN, labels.length), { method: "POST", body: form });
    const body = await r.json().catch(() => ({ detail: `HTTP ${r.status}` }));
    if (Array.isArray(body)) results = body;
    else if (body.results) results = body.results;
    else {
      const why = r.status === 413 ? "too large for the server" : r.status === 401 ? "the server needs its API key: reload the page" : (body.detail || `HTTP ${r.status}`);
      results = group.map(() => ({ error: why, predictions: [] }));
    }
  } catch (e) {
    results = group.map(() => ({ error: "no answer from the server: " + e.message, predictions: [] }));
  }
  group.forEach((item, j) => {
    item.row.result = results[j] || { error: "no answer for this file", predictions: [] };
    render(item.row);
  });
  renderTable();
}

async function classify(fileList, onlyImages = false) {
  let files = [...fileList];
  const skipped = onlyImages ? files.filter((f) => !(f.type.startsWith("image/") || IMAGE_TYPES.test(f.name))).length : 0;
  if (onlyImages) files = files.filter((f) => f.type.startsWith("image/") || IMAGE_TYPES.test(f.name));
  if (!files.length) {
    if (skipped) $("status").textContent = `no images among the ${skipped} file(s) chosen`;
    return;
  }
  const status = $("status");
  const t0 = performance.now();
  const items = files.map((file) => {
    const name = file.webkitRelativePath || file.name;
    let preview = placeholder(name, "no preview");
    if (file.type.startsWith("image/")) {   // the browser may still not show it (HEIC, a broken file)
      preview = el("img", { alt: file.name, src: URL.createObjectURL(file) });
      preview.onerror = () => preview.replaceWith(placeholder(name, (row.result && row.result.error) || "no preview in this browser"));
    }
    const tile = el("article", { class: "result pending" }, preview,
      el("div", { class: "name" }, name), el("div", { class: "top" }, "classifying…"));
    const row = { n: rows.length + 1, name, tile, result: null, file, why: null };
    rows.push(row);
    $("results").append(tile);   // in the order chosen
    return { file, row };
  });
  renderTable();
  status.textContent = `classifying ${files.length} photo(s)…`;
  const queue = plan(items);
  await Promise.all(Array.from({ length: Math.min(PARALLEL, queue.length) }, async () => {
    while (queue.length) await send(queue.shift());
  }));
  const failed = items.filter((i) => i.row.result && i.row.result.error).length;
  const seconds = ((performance.now() - t0) / 1000).toFixed(1);
  status.textContent = `${files.length - failed} classified` + (failed ? `, ${failed} not classified` : "") +
    (skipped ? `, ${skipped} non-image file(s) skipped` : "") + ` in ${seconds} s`;
  status.dataset.done = String(files.length - failed);
  renderTable();
}

function setView(table) {
  $("results").hidden = table;
  $("table-view").hidden = !table;
  $("view-tiles").setAttribute("aria-pressed", String(!table));
  $("view-table").setAttribute("aria-pressed", String(table));
}

function setup() {
  loadCard();
  for (const id of ["pick", "camera", "folder"]) {
    $(id).addEventListener("change", (e) => { classify(e.target.files, id === "folder"); e.target.value = ""; });
  }
  if (!("webkitdirectory" in $("folder"))) $("folder-button").hidden = true;
  const threshold = $("min-score");
  threshold.addEventListener("input", () => {
    $("min-score-shown").textContent = Math.round(100 * minScore()) + " %";
    rows.forEach(render);
    renderTable();
  });
  $("view-tiles").onclick = () => setView(false);
  $("view-table").onclick = () => setView(true);
  $("download-csv").onclick = downloadCsv;
  $("clear").onclick = () => {
    rows.length = 0;
    $("results").replaceChildren();
    $("status").textContent = "";
    renderTable();
  };
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (entries.some((x) => x.isDirectory)) classify(await readEntries(entries), true);
    else classify(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => classify(e.clipboardData.files));
}

// The files of dropped folders (and their sub-folders).
async function readEntries(entries) {
  const files = [];
  const walk = async (entry) => {
    if (entry.isFile) files.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) await walk(entry);
  return files;
}

document.addEventListener("DOMContentLoaded", setup);
