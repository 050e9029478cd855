// The tfguess page: pick or drop photos, see the model's top labels for each.
"use strict";
const CHUNK = 16;  // images per request
const SHOWN = 3;   // labels shown per image

const pct = (v) => (100 * v).toFixed(1) + " %";


async function loadCard() {
  const facts = $("card-facts");
  try {
    const r = await fetch("/api/model");
    const m = await r.json();
    $("model-name").textContent = m.name;
    $("report-link").hidden = !m.report;
    $("review-link").hidden = !m.review;
    const rows = [
      ["labels", m.labels.join(", ")],
      ["backbone", m.backbone ? `${m.backbone.name} (${m.input_size} px, ${m.resize})` : `${m.input_size} px`],
      ["mode", m.mode || "–"],
      ["test accuracy", m.test_accuracy == null ? "–" :
        `${pct(m.test_accuracy)} (n=${m.metrics && m.metrics.test ? m.metrics.test.n : "?"})`],
      ["trained", new Date(m.date).toLocaleString()],
      ["engine", m.engine],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]));
    if (m.report) facts.append(el("dt", {}, "report"), el("dd", {}, el("a", { href: "/report/" }, "evaluation report")));
  } catch (e) {
    facts.replaceChildren(el("dt", {}, "error"), el("dd", { class: "error-text" }, String(e)));
  }
}

function bars(predictions) {
  return predictions.slice(0, SHOWN).map((p) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = (100 * p.score).toFixed(1) + "%";
    return el("div", { class: "bar" }, el("span", { class: "label", title: p.label }, p.label),
      el("div", { class: "track" }, fill), el("span", { class: "score" }, pct(p.score)));
  });
}

function show(tile, result) {
  const top = tile.querySelector(".top");
  if (result.error) {
    tile.classList.add("error");
    top.textContent = result.error;
    return;
  }
  const best = result.predictions[0];
  tile.dataset.label = best.label;
  tile.dataset.score = best.score;
  top.textContent = best.label;
  tile.append(...bars(result.predictions));
}

async function classify(files) {
  files = [...files];
  if (!files.length) return;
  const status = $("status");
  const tiles = files.map((f) => {
    const img = el("img", { alt: f.name });
    if (f.type.startsWith("image/")) img.src = URL.createObjectURL(f);
    const tile = el("article", { class: "result pending" }, img,
      el("div", { class: "name" }, f.name), el("div", { class: "top" }, "classifying…"));
    $("results").prepend(tile);
    return tile;
  });
  status.textContent = `classifying ${files.length} photo(s)…`;
  let failed = 0;
  for (let i = 0; i < files.length; i += CHUNK) {
    const part = files.slice(i, i + CHUNK), partTiles = tiles.slice(i, i + CHUNK);
    const form = new FormData();
    for (const f of part) form.append("files", f, f.name);
    let results;
    try {
      const r = await fetch("/api/predict?top_k=" + SHOWN, { method: "POST", body: form });
      const body = await r.json().catch(() => ({ detail: `HTTP ${r.status}` }));
      if (Array.isArray(body)) results = body;
      else if (body.results) results = body.results;
      else results = part.map(() => ({ error: body.detail || `HTTP ${r.status}` }));
    } catch (e) {
      results = part.map(() => ({ error: "no answer from the server: " + e }));
    }
    results.forEach((res, j) => {
      partTiles[j].classList.remove("pending");
      failed += res.error ? 1 : 0;
      show(partTiles[j], res);
    });
  }
  status.textContent = `${files.length - failed} classified` + (failed ? `, ${failed} not readable` : "");
}

function setup() {
  loadCard();
  for (const id of ["pick", "camera"]) {
    $(id).addEventListener("change", (e) => { classify(e.target.files); e.target.value = ""; });
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classify(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => classify(e.clipboardData.files));
}

document.addEventListener("DOMContentLoaded", setup);
