// The inbox page: label unlabelled photos uncertain-first with one key, undo, re-train, sort;
// or start a TF_FILES from nothing (labels, photos, first training).
"use strict";
const TOKEN = document.querySelector('meta[name="tfguess-token"]').content;
const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1) + " %");

async function call(url, body, isForm) {
  const headers = { "X-Tfguess-Token": TOKEN };
  if (!isForm) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method: "POST", headers, body: isForm ? body : JSON.stringify(body || {}) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.detail || `HTTP ${r.status}`);
  return data;
}

let state = null;
let busy = false;

function say(text, bad) {
  $("status").textContent = text;
  $("status").className = bad ? "error" : "";
}

async function act(fn, working) {
  if (busy) return;
  busy = true;
  if (working) say(working);
  try {
    const out = await fn();
    await load();
    return out;
  } catch (e) {
    say(e.message, true);
    await load(true);  // a photo deleted or replaced meanwhile: the list as it is now
  } finally {
    busy = false;
  }
}

async function load(quiet) {
  const r = await fetch("/api/inbox?order=" + encodeURIComponent($("order").value));
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { if (!quiet) say(data.detail || `HTTP ${r.status}`, true); return; }
  state = data;
  render();
}

// ---- start from nothing

function renderSetup() {
  const counts = state.photo_counts || {};
  $("min-photos").textContent = state.min_photos;
  const rows = Object.entries(counts).map(([label, n]) => {
    const row = el("div", { class: "inbox-label", "data-label": label });
    const short = n < state.min_photos;
    row.append(el("b", {}, label), el("span", { class: "count" + (short ? " short" : "") }, `${n} / ${state.min_photos} photos`));
    const pick = (text, attrs) => {
      const input = el("input", { type: "file", accept: "image/*", hidden: "", ...attrs });
      input.addEventListener("change", () => upload(label, input.files));
      return el("label", { class: "button secondary" }, text, input);
    };
    row.append(pick("Add photos", { multiple: "", "data-kind": "upload" }),
      pick("Add a folder", { multiple: "", webkitdirectory: "", "data-kind": "folder" }),
      pick("Camera", { capture: "environment", "data-kind": "camera" }));
    return row;
  });
  $("labels").replaceChildren(...rows);
  $("train").disabled = !!state.not_ready;
  $("train-note").textContent = state.not_ready ? state.not_ready : "ready: every label has enough photos";
  $("try").hidden = !state.model;
}

async function upload(label, files) {
  const list = Array.from(files || []).filter((f) => !f.name.startsWith("."));
  if (!list.length) return;
  await act(async () => {
    const form = new FormData();
    for (const f of list) form.append("files", f, f.name);
    const out = await call("/api/inbox/photos?label=" + encodeURIComponent(label), form, true);
    say(`added ${out.added.length} photo(s) to ${label}` + (out.errors.length ? `; ${out.errors.join("; ")}` : ""));
  }, `adding ${list.length} photo(s) to ${label}…`);
}

async function tryPhoto(file) {
  const form = new FormData();
  form.append("files", file, file.name);
  const r = await fetch("/api/predict?top_k=3", { method: "POST", body: form });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { say(data.detail || `HTTP ${r.status}`, true); return; }
  const res = data[0];
  const img = el("img", { alt: file.name, class: "try-img", width: "160" });
  img.src = URL.createObjectURL(file);
  const best = res.predictions[0];
  $("try-result").replaceChildren(img, el("p", { class: "try-top" }, `${best.label} (${best.score.toFixed(3)})`));
}

// ---- the inbox

// Keys 1-9 keep their labels while the page is open: a new label takes the next free key.
const keyOrder = [];

function labelsForKeys() {
  if (state && state.stats) {
    for (const label of state.stats.labels) if (!keyOrder.includes(label)) keyOrder.push(label);
  }
  return keyOrder.slice(0, 9);
}

// A label's whole name, with a line break allowed after each "_" or "-" (never cut with "…").
function labelText(label) {
  return label.split(/(?<=[_-])/).flatMap((part, i) => (i ? [el("wbr"), part] : [part]));
}

function cardNode(item, index) {
  const node = el("article", { class: "inbox-card" + (index === 0 ? " current" : ""), "data-name": item.name });
  const img = el("img", { alt: item.name, loading: index < 60 ? "eager" : "lazy" });
  img.src = "/api/inbox/image?name=" + encodeURIComponent(item.name);
  node.append(img, el("div", { class: "name" }, item.name));
  for (const [label, score] of item.top) {
    const bar = el("div", { class: "bar" }, el("span", { class: "label", title: label }, ...labelText(label)),
      el("span", { class: "track" }, el("span", { class: "fill" })), el("span", { class: "score" }, score.toFixed(2)));
    bar.querySelector(".fill").style.width = (100 * score).toFixed(1) + "%";
    node.append(bar);
  }
  const choices = el("div", { class: "choices" });
  labelsForKeys().forEach((label, i) => {
    const b = el("button", { class: "secondary", "data-label": label, title: `key ${i + 1}: ${label}` },
      el("span", { class: "key" }, String(i + 1)), " ", ...labelText(label));
    b.onclick = () => labelImage(item.name, label);
    choices.append(b);
  });
  const none = el("button", { class: "secondary none", title: "key x: none of these" },
    el("span", { class: "key" }, "x"), " none");
  none.onclick = () => labelImage(item.name, null);
  choices.append(none);
  node.append(choices);
  return node;
}

// How often the model's guess was the label given, and its estimated accuracy on the rest.
function guessFigures(s) {
  const g = s.guesses;
  const right = g.checked
    ? el("span", { id: "guess-accuracy" }, "the model's guess was right on ", el("b", {}, `${g.right} of the last ${g.checked}`),
      ` photos you labelled (${pct(g.accuracy)})`)
    : el("span", { id: "guess-accuracy" }, "the model's guesses: ", el("b", {}, "none checked yet"), " (label a photo)");
  const estimate = el("span", { id: "estimate" }, `estimated accuracy on the ${s.pending} left: `,
    el("b", {}, g.estimated_accuracy == null ? "–" : `${pct(g.estimated_accuracy)} (about ${g.remaining_mistakes} mistakes)`));
  const meaning = el("p", { id: "figures-meaning", class: "muted" },
    "“Right”: the guess the page showed, before you gave the label, was your label (bulk-accepted photos not counted). " +
    "You label the photos it is least sure of first, so it does better on the rest: the estimate is its own doubt on the " +
    "photos left, " + (g.recorded ? `scaled by how over-confident its ${g.recorded} checked guesses proved (×${g.overconfidence}).`
      : "until your labels show how far to trust it."));
  return [right, estimate, meaning];
}

function renderSorter() {
  const s = state.stats;
  const fig = (name, value) => el("span", {}, name + ": ", el("b", {}, String(value)));
  $("figures").replaceChildren(
    fig("to sort", s.pending), fig("labelled", s.labelled), fig("none of these", s.none),
    fig("re-train", s.retrain_seconds == null ? "–" : `${s.retrain_seconds} s` + (s.auto_every ? `, every ${s.auto_every} labels (${s.since_retrain} since)` : "")),
    ...guessFigures(s),
    fig("photos per label", Object.entries(s.per_label).map(([k, v]) => `${k} ${v}`).join(", ")));
  $("keys").replaceChildren("Keys: ", ...labelsForKeys().flatMap((l, i) => [el("kbd", {}, String(i + 1)), ` ${l}  `]),
    el("kbd", {}, "n"), " new label  ", el("kbd", {}, "x"), " none of these  ", el("kbd", {}, "u"), " undo");
  $("cards").replaceChildren(...state.items.map(cardNode));
  const sel = $("bulk-label");
  const keep = sel.value;
  sel.replaceChildren(...s.model_labels.map((l) => el("option", { value: l }, l)));
  if (keep) sel.value = keep;
  const rows = state.journal.slice().reverse().map((a) => el("tr", { "data-id": String(a.id) },
    el("td", {}, String(a.id)), el("td", {}, a.action === "copy" ? `→ ${a.label}` : a.action === "none" ? "none of these" : `undo #${a.undoes}`),
    el("td", {}, a.source), el("td", {}, a.action === "copy" ? a.destination : "")));
  $("journal").replaceChildren(...rows);
}

function render() {
  const sorting = !!state.stats;
  $("sorter").hidden = !sorting;
  $("setup").hidden = sorting && state.stats.model_labels.length >= 2;
  renderSetup();
  if (sorting) renderSorter();
  if (state.finished) say(`Sorted: ${state.finished.copied} copied into ${state.finished.dst} (manifest ${state.finished.manifest})`);
}

async function labelImage(name, label) {
  await act(async () => {
    const out = await call("/api/inbox/label", { name, label });
    say(label ? `${name} → ${label}` + (out.retrained ? " (re-trained)" : "") : `${name}: none of these`);
  });
}

function current() {
  return state && state.items.length ? state.items[0].name : null;
}

document.addEventListener("keydown", (e) => {
  if (!state || !state.stats || e.ctrlKey || e.metaKey || e.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) return;
  const name = current();
  if (/^[1-9]$/.test(e.key)) {
    const label = labelsForKeys()[Number(e.key) - 1];
    if (label && name) { e.preventDefault(); labelImage(name, label); }
  } else if (e.key === "x" && name) {
    e.preventDefault(); labelImage(name, null);
  } else if (e.key === "u") {
    e.preventDefault(); act(() => call("/api/inbox/undo", {}).then((a) => say(`undone: #${a.undoes}`)));
  } else if (e.key === "n" && name) {
    e.preventDefault();
    const label = (window.prompt(`New label for ${name}:`) || "").trim();
    if (label) labelImage(name, label);
  }
});

document.addEventListener("DOMContentLoaded", () => {
  $("order").addEventListener("change", load);
  $("retrain").onclick = () => act(async () => {
    const out = await call("/api/inbox/retrain");
    say(`re-trained in ${out.seconds} s`);
  }, "re-training…");
  $("undo").onclick = () => act(() => call("/api/inbox/undo", {}).then((a) => say(`undone: #${a.undoes}`)));
  $("finish").onclick = () => act(() => call("/api/inbox/finish"), "training the model and sorting the inbox…");
  $("bulk").addEventListener("submit", (e) => {
    e.preventDefault();
    const label = $("bulk-label").value, min_score = Number($("bulk-score").value);
    act(async () => {
      const out = await call("/api/inbox/accept", { label, min_score });
      say(`accepted ${out.labelled} image(s) as ${label}`);
    });
  });
  $("new-label-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("new-label").value.trim();
    if (!name) return;
    act(async () => { await call("/api/inbox/labels", { name }); $("new-label").value = ""; say(`label ${name} created`); });
  });
  $("train").onclick = () => act(async () => {
    const out = await call("/api/inbox/train");
    say(`trained in ${out.seconds} s: labels ${out.labels.join(", ")}`);
  }, "training…");
  $("try-file").addEventListener("change", () => { const f = $("try-file").files[0]; if (f) tryPhoto(f); });
  load();
});
