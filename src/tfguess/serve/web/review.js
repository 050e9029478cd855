// The review page: move suspected label errors to another label, take junk out, undo, re-train.
"use strict";
const TOKEN = document.querySelector('meta[name="tfguess-token"]').content;
const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1) + " %");


async function post(url, body) {
  const r = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Tfguess-Token": TOKEN },
    body: JSON.stringify(body || {}),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.detail || `HTTP ${r.status}`);
  return data;
}

let state = null;

let retraining = false;

// The banner shows while changes wait for a re-training (or one is running), never otherwise;
// the server counts them (an undo of a change the report already saw is one too).
function renderBanner() {
  const n = state && state.changes ? state.pending || 0 : 0;
  $("banner").hidden = !n && !retraining;
  $("banner-text").textContent = retraining ? "re-training…" :
    `${n} change(s) since the report. Re-train to update the model (seconds: features are cached).`;
}

function itemNode(item) {
  const last = state.changes.filter((c) => c.undoable && c.destination === item.path).pop();
  const node = el("article", { class: "review-item" + (last ? " changed" : ""), "data-path": item.path });
  let img;
  if (item.where === "gone") img = el("div", { class: "no-preview", role: "img", "aria-label": item.name },
    el("span", { class: "file" }, item.name), el("span", { class: "reason" }, "file not found"));
  else img = el("img", { alt: item.name, loading: "lazy", src: "/api/review/image?path=" + encodeURIComponent(item.path) });
  const info = el("div");
  info.append(el("div", {}, el("span", { class: "tag " + item.kind }, item.kind === "suspect" ? "suspected label error" : "misclassified"),
    " ", el("b", {}, item.name)));
  const where = item.where === "data" ? `now in ${item.label}` : item.where === "removed" ? "taken out of the data set" : "file not found";
  info.append(el("div", {}, `folder: ${item.given} · model says: `, el("b", {}, `${item.suggested}`), ` (${item.score.toFixed(2)}) · `,
    el("span", { class: "where" }, where)));
  const actions = el("div", { class: "actions" });
  if (item.where === "data") {
    const select = el("select", { "aria-label": "new label" });
    for (const label of state.labels) {
      if (label === item.label) continue;
      const opt = el("option", { value: label }, label);
      if (label === item.suggested) opt.selected = true;
      select.append(opt);
    }
    const move = el("button", { class: "move" }, "Move to label");
    move.onclick = () => act(() => post("/api/review/move", { path: item.path, label: select.value }));
    const out = el("button", { class: "secondary remove" }, "Take out of the data set");
    out.onclick = () => act(() => post("/api/review/move", { path: item.path }));
    if (select.options.length) actions.append(select, move);
    actions.append(out);
  }
  if (last) actions.append(undoButton(last, `Undo (${last.action === "move" ? "move to " + last.to_label : "take-out"})`));
  info.append(actions);
  node.append(img, info);
  return node;
}

function undoButton(change, text) {
  const undo = el("button", { class: "secondary undo", "data-change": change.id }, text);
  undo.onclick = () => act(() => post("/api/review/undo", { id: change.id }));
  return undo;
}

// The newest change in effect that moved the image of change c again.
function movedAgain(c) {
  const inEffect = (o) => o.action !== "undo" && !o.undone;
  let last = c;
  for (let next; (next = state.changes.find((o) => inEffect(o) && o.id > last.id && o.source === last.destination));) last = next;
  return last === c ? null : last;
}

// Every change still in effect has its Undo here, before and after re-trainings alike; one whose
// image was moved again since says which change to undo first.
function renderJournal() {
  const rows = state.changes.slice().reverse().map((c) => {
    const what = c.action === "move" ? `${c.from_label} → ${c.to_label}` :
      c.action === "remove" ? `${c.from_label} → taken out` : `undo #${c.undoes}`;
    const later = c.action !== "undo" && !c.undone && !c.undoable ? movedAgain(c) : null;
    const action = c.undoable ? undoButton(c, "Undo") : later ? el("span", { class: "muted" }, `undo #${later.id} first`) : "";
    return el("tr", { "data-change": c.id }, el("td", {}, String(c.id)), el("td", { class: "what" }, what + (c.undone ? " (undone)" : "")),
      el("td", { class: "file" }, c.destination), el("td", { class: "muted when" }, new Date(c.time).toLocaleString()),
      el("td", {}, action));
  });
  $("journal").replaceChildren(...rows);
}

async function load() {
  const r = await fetch("/api/review");
  state = await r.json();
  if (!r.ok) {
    $("summary").textContent = state.detail || `HTTP ${r.status}`;
    return;
  }
  if (!state.report) {
    $("summary").textContent = state.hint;
  } else {
    const s = state.items.filter((i) => i.kind === "suspect").length;
    $("summary").textContent = `${s} suspected label error(s), ${state.items.length - s} misclassified ${state.split} image(s); ` +
      `${state.split} accuracy ${pct(state.accuracy)} (${state.accuracy_note ? state.accuracy_note + "; " : ""}report of ${new Date(state.generated).toLocaleString()}).`;
  }
  if (state.report && !state.items.length) {
    $("items").replaceChildren(el("p", { class: "empty" }, "Nothing to review: the report found no suspected label errors and no misclassified images."));
  } else {
    $("items").replaceChildren(...state.items.map(itemNode));
  }
  renderJournal();
  renderBanner();
}

async function act(fn) {
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  try {
    await fn();
  } catch (e) {
    alert(e.message);
  }
  await load();
  for (const b of document.querySelectorAll("button")) b.disabled = false;
}

async function retrain() {
  const status = $("retrain-status");
  $("retrain").disabled = true;
  retraining = true;
  renderBanner();
  status.className = "";
  status.textContent = "";
  try {
    let s = await post("/api/review/retrain");
    while (s.state === "running") {
      await new Promise((ok) => setTimeout(ok, 1000));
      s = await (await fetch("/api/review/retrain")).json();
    }
    if (s.state === "done") {
      status.className = "ok-text";
      status.textContent = `done in ${s.seconds} s: test accuracy ${pct(s.accuracy_before)} → ${pct(s.accuracy)} (n=${s.n_test}${s.test_note ? "; " + s.test_note : ""}); the page now uses the new model.`;
    } else {
      status.className = "error-text";
      status.textContent = "re-training failed: " + s.error;
    }
  } catch (e) {
    status.className = "error-text";
    status.textContent = "re-training failed: " + e.message;
  }
  retraining = false;
  $("retrain").disabled = false;
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("retrain").onclick = retrain;
  load();
});
