"""The report's rendering: figures, thumbnails and the HTML page (opens from disk, no scripts)."""

from __future__ import annotations

import csv
import hashlib
import html
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tfguess.data import hygiene
from tfguess.training.evaluation import figure_note

THUMB_SIZE = 128
MAX_SHOWN = 60


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(path: Path, confusion: np.ndarray, labels: list[str], title: str) -> None:
    plt = _plt()
    k = len(labels)
    side = min(12.0, 2.5 + 0.6 * k)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    totals = confusion.sum(axis=1, keepdims=True)
    share = confusion / np.maximum(totals, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label (folder)")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true label")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_png(path: Path, history: list[dict], best_epoch: int | None) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    for ax, key, name in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [h.get(prefix + key, np.nan) for h in history]
            if np.isfinite(values).any():
                ax.plot(epochs, values, style, label=("validation " if prefix else "train ") + name)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", lw=0.8, ls=":", label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _thumb_name(path: Path, digest: str | None) -> str:
    key = digest or hashlib.sha256(os.fsencode(path)).hexdigest()
    return f"thumbs/{key[:20]}.jpg"


def _make_thumb(src: Path, dst: Path) -> bool:
    from PIL import Image

    from tfguess.data.images import ImageError, decode_image

    if dst.exists():
        return True
    try:
        im = decode_image(src, draft_size=THUMB_SIZE)
        im.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        im.save(dst, "JPEG", quality=82)
        return True
    except (ImageError, OSError, ValueError):
        return False


class Thumbs:
    """Thumbnails written beside the page; ``tag`` gives the HTML (a preview or a grey box)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.wanted: dict[str, Path] = {}
        self.ok: dict[str, bool] = {}

    def want(self, path: str | Path, digest: str | None = None) -> str:
        name = _thumb_name(Path(path), digest)
        self.wanted.setdefault(name, Path(path))
        return name

    def make(self) -> None:
        (self.out / "thumbs").mkdir(parents=True, exist_ok=True)
        names = list(self.wanted)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            done = pool.map(lambda n: _make_thumb(self.wanted[n], self.out / n), names)
            self.ok = dict(zip(names, done, strict=True))

    def tag(self, path: str | Path, digest: str | None = None) -> str:
        name = _thumb_name(Path(path), digest)
        if self.ok.get(name):
            alt = _e(Path(path).name)
            return f'<img class="thumb" src="{name}" alt="{alt}" loading="eager">'
        return '<div class="thumb none">no preview</div>'


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{margin-top:36px;border-bottom:1px solid #dde1e6;padding-bottom:4px}
.muted{color:#5c6670} nav a{margin-right:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px} .warn{background:#fff4e5;border:1px solid #f0c36d;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse;background:#fff;margin:8px 0} th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#eef1f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px;width:140px;font-size:12px;overflow-wrap:anywhere}
.thumb{display:block;width:128px;height:128px;object-fit:contain;image-rendering:auto;margin:0 auto 4px}
.none{width:128px;height:128px;background:#e4e7eb;color:#5c6670;display:flex;align-items:center;justify-content:center}
.bad{color:#b3261e;font-weight:600} .bar{background:#4a7fd4;height:12px;display:inline-block}
figure{margin:8px 0} figure img{max-width:100%;background:#fff;border:1px solid #dde1e6}
"""


def _e(value) -> str:  # bytes of a file name that are not UTF-8 shown as \xNN
    return html.escape(os.fsencode(str(value)).decode("utf-8", "backslashreplace"))


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _short(path: str, root: str | None) -> str:
    p = Path(path)
    if root:
        try:
            return str(p.relative_to(root))
        except ValueError:
            pass
    return p.name


def _link(path: str, root: str | None) -> str:
    p = Path(path)
    href = p.as_uri() if p.is_absolute() else p.as_posix()
    return f'<a href="{_e(href)}">{_e(_short(path, root))}</a>'


def _metrics_table(m: dict, labels: list[str], worst: str | None) -> str:
    out = ["<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"]
    for label in labels:
        p = m["per_label"].get(label)
        if p:
            # A label is flagged only when it is weaker than perfect: at F1 1.000 nothing is wrong.
            flag = label == worst and len(labels) > 1 and p["f1"] < 1
            cls = " class='bad'" if flag else ""
            out.append(f"<tr><td{cls}>{_e(label)}</td><td class='num'>{p['precision']:.3f}</td>"
                       f"<td class='num'>{p['recall']:.3f}</td><td class='num'>{p['f1']:.3f}</td>"
                       f"<td class='num'>{p['support']}</td></tr>")
    measured = [p for p in m["per_label"].values() if p["support"]]
    if measured:
        macro = {k: float(np.mean([p[k] for p in measured])) for k in ("precision", "recall", "f1")}
        out.append(f"<tr><th>macro average</th><td class='num'>{macro['precision']:.3f}</td>"
                   f"<td class='num'>{macro['recall']:.3f}</td><td class='num'>{macro['f1']:.3f}</td>"
                   f"<td class='num'>{m['n']}</td></tr>")
    out.append(f"<tr><th>accuracy</th><td class='num' colspan='4'>{_pct(m['accuracy'])}</td></tr></table>")
    return "\n".join(out)


def _page_top(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    """The head, the title line, the section links, the warnings and the summary cards."""
    m, split, near = data["metrics"], data["eval_split"], data["near_duplicates"]
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tfguess report: "
           f"{_e(Path(data['tf_files']).name)}</title><meta name='viewport' content='width=device-width'>"
           f"<style>{CSS}</style></head><body><main>",
           f"<h1>Evaluation report</h1><p class='muted'>{_e(data['tf_files'])} · images from "
           f"{_e(data.get('image_dir'))} · backbone {_e(data['backbone'])} · mode "
           f"{_e(data.get('mode', 'frozen'))} · {_e(data['generated'])}</p>",
           "<nav><a href='#metrics'>Metrics</a><a href='#confusion'>Confusion</a><a href='#curves'>Training</a>"
           "<a href='#misclassified'>Misclassified</a><a href='#suspects'>Suspected label errors</a>"
           "<a href='#atypical'>Atypical</a><a href='#duplicates'>Duplicates</a><a href='#skipped'>Skipped</a><a href='#balance'>Balance</a></nav>"]
    out += [f"<p class='warn'>{_e(text)}</p>" for text in data["warnings"]]
    cards = [
        (_pct(m.get("accuracy")), f"{split} accuracy (n={m.get('n', 0)})"
         + (", before the last refit" if m.get("before_refit") else "")),
        (str(len(data["misclassified"])), f"misclassified {split} images"),
        (str(len(data["suspects"])), "suspected label errors"),
        (str(len(data["exact_duplicates"])), "exact duplicates"),
        (str(len(near["pairs"])), f"near-duplicate pairs ({near['cross_split']} across splits)"),
        (str(len(data["skipped"])), "skipped files"),
    ]
    out.append("<div class='cards'>" + "".join(f"<div class='card'><b>{_e(v)}</b>{_e(k)}</div>"
                                               for v, k in cards) + "</div>")
    return out


def _metrics_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    m, labels = data["metrics"], data["labels"]
    out = [f"<h2 id='metrics'>Metrics on the {data['eval_split']} split</h2>"]
    note = figure_note(m)
    if note:
        out.append(f"<p class='muted' id='figure-note'>{_e(note[0].upper() + note[1:])}"
                   + (" (a fair estimate of the saved model, which learned from more photos; "
                      "--hold-out-test keeps the test photos out)." if m.get("before_refit")
                      else ".") + "</p>")
    if m.get("per_label"):
        out.append(_metrics_table(m, labels, data["worst_label"]))
        other = ", ".join(f"{s}: {_pct(v['accuracy'])} (n={v['n']})" for s, v in data["all_metrics"].items())
        out.append(f"<p class='muted'>All splits: {_e(other)}.</p>")
    else:
        out.append("<p>No images in any held-out split: nothing to measure.</p>")
    extra = data.get("eval_dir")
    if extra and extra.get("per_label"):
        out.append(f"<h3>Metrics on {_e(extra.get('folder', 'the evaluation folder'))}</h3>")
        out.append(_metrics_table(extra, labels, None))
    return out + _guessing_note(data.get("precision")) + _decisions(data.get("decisions"))


def _decisions(decisions: list[dict] | None) -> list[str]:
    """How the model was made: the recipe, the resize and fine-tuning, each with its evidence
    (the guessing engine has its line above)."""
    rows = [d for d in decisions or [] if d["what"] != "guessing"]
    if not rows:
        return []
    items = "".join(f"<li><b>{_e(d['what'])}</b>: {_e(d['chosen'])} <span class='muted'>"
                    f"({_e(d['why'])})</span></li>" for d in rows)
    return ["<h3 id='decisions'>How it was trained</h3>", f"<ul>{items}</ul>"]


def _guessing_note(precision: dict | None) -> list[str]:
    """Which arithmetic ``guess``, ``guess-dir`` and ``serve`` run, and why: ``--precision auto``
    keeps the int8 engine only when it is as accurate as float32 on the held-out photos."""
    if not precision:
        return []
    why = ((precision.get("int8_check") or {}).get("why") or precision.get("cpu")
           or f"--precision {precision.get('setting')}")
    return [f"<p class='muted'>Guessing runs {_e(precision.get('guess', 'float32'))}: "
            f"{_e(why)}.</p>"]


def _figures_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    """The confusion matrices and the training curves."""
    out = ["<h2 id='confusion'>Confusion matrix</h2>"]
    if "confusion" in figures:
        out.append(f"<figure><img id='confusion-matrix' src='{figures['confusion']}' alt='confusion matrix'>"
                   f"<figcaption class='muted'>Rows: the folder's label; columns: the model's guess "
                   f"({data['eval_split']} split). Colour: share of the row.</figcaption></figure>")
    if "confusion_eval_dir" in figures:
        out.append(f"<figure><img id='confusion-eval-dir' src='{figures['confusion_eval_dir']}' "
                   "alt='confusion matrix of the evaluation folder'></figure>")
    out.append("<h2 id='curves'>Training curves</h2>")
    if "curves" in figures:
        out.append(f"<figure><img id='training-curves' src='{figures['curves']}' alt='training curves'></figure>")
    else:
        out.append("<p>No history.csv in TF_FILES.</p>")
    return out


def _misclassified_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    root, items = data.get("image_dir"), data["misclassified"]
    out = [f"<h2 id='misclassified'>Misclassified {data['eval_split']} images ({len(items)})</h2>"]
    if data["metrics"].get("before_refit"):
        out.append("<p class='muted'>The mistakes of the model before its last refit, which "
                   "then trained on these photos too.</p>")
    if not items:
        return [*out, "<p>None.</p>"]
    out.append("<div class='grid'>")
    for item in items[:MAX_SHOWN]:
        score = "–" if item["score"] is None else f"{item['score']:.2f}"
        out.append(f"<div class='tile'>{thumbs.tag(item['path'], item['digest'])}{_link(item['path'], root)}<br>"
                   f"folder: <b>{_e(item['label'])}</b><br>guess: <span class='bad'>{_e(item['predicted'])}</span>"
                   f" ({score})</div>")
    out.append("</div>")
    return out


def _suspects_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    root, suspects, sm = data.get("image_dir"), data["suspects"], data["suspect_method"]
    out = [f"<h2 id='suspects'>Suspected label errors ({len(suspects)})</h2>"
           f"<p class='muted'>Each usable image was predicted by a {_e(sm['model'])} that never saw it "
           f"({sm['folds']}-fold cross-validation over {sm['images']} images; out-of-sample accuracy "
           f"{_pct(sm['out_of_sample_accuracy'])}). Confident learning (cleanlab) flags the images whose "
           "folder disagrees with a confident prediction; the lowest score (probability of the folder's "
           "label) first. Look at them: move the wrong ones, delete the junk. Full list: "
           "<a href='suspects.csv'>suspects.csv</a>.</p>"]
    if not suspects:
        return [*out, "<p>None found.</p>"]
    out.append("<table><tr><th>#</th><th>image</th><th>file</th><th>folder label</th><th>suggested</th>"
               "<th>score</th><th>split</th></tr>")
    for s in suspects[:MAX_SHOWN]:
        out.append(f"<tr><td class='num'>{s['rank']}</td><td>{thumbs.tag(s['path'], s['digest'])}</td>"
                   f"<td>{_link(s['path'], root)}</td><td>{_e(s['given'])}</td>"
                   f"<td class='bad'>{_e(s['suggested'])} ({s['suggested_prob']:.2f})</td>"
                   f"<td class='num'>{s['self_confidence']:.3f}</td><td>{_e(s['split'])}</td></tr>")
    out.append("</table>")
    return out


def _atypical_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    root, atypical = data.get("image_dir"), data["atypical"]
    out = [f"<h2 id='atypical'>Most atypical images ({len(atypical)})</h2>"
           "<p class='muted'>The images least like any other (cleanlab out-of-distribution score of the "
           "features, lowest first): often junk, placeholders or photos of something else. Not necessarily "
           "wrong; worth a look.</p>"]
    if atypical:
        out.append("<div class='grid'>")
        out += [f"<div class='tile'>{thumbs.tag(a['path'], a['digest'])}{_link(a['path'], root)}<br>"
                f"folder: <b>{_e(a['label'])}</b><br>score {a['score']:.3f}</div>" for a in atypical]
        out.append("</div>")
    return out


def _exact_duplicates_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    """Exact duplicates, and the same content under different labels."""
    root, dups = data.get("image_dir"), data["exact_duplicates"]
    out = ["<h2 id='duplicates'>Duplicates</h2>",
           f"<h3>Exact duplicates ({len(dups)})</h3><p class='muted'>Files with identical "
           "content; training used each content once.</p>"]
    if dups:
        out.append("<table><tr><th>image</th><th>kept</th><th>duplicate (not used)</th></tr>")
        out += [f"<tr><td>{thumbs.tag(d['kept'])}</td><td>{_link(d['kept'], root)}</td>"
                f"<td>{_link(d['duplicate'], root)}</td></tr>" for d in dups[:MAX_SHOWN]]
        out.append("</table>")
    out += [f"<p class='warn'>Same content under different labels ({_e(', '.join(c['labels']))}): "
            f"{_e(', '.join(_short(p, root) for p in c['paths']))}</p>" for c in data["conflicts"]]
    return out


def _near_duplicates_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    root, near = data.get("image_dir"), data["near_duplicates"]
    out = [f"<h3>Near-duplicates ({_n(len(near['pairs']), 'pair')}, {near['cross_split']} across splits)</h3>"
           f"<p class='muted'>Different files whose features have a cosine similarity of at least "
           f"{near['threshold']:.3f} (resized, re-encoded or slightly cropped copies, bursts). The threshold is "
           f"{hygiene.NEAR_DUPLICATE_THRESHOLD:.2f}, raised for data sets whose images are all alike. A pair "
           "split between train and validation/test makes the held-out accuracy look better than it is.</p>"]
    if not near["pairs"]:
        return out
    out.append("<table><tr><th colspan='2'>first</th><th colspan='2'>second</th><th>similarity</th><th>note</th></tr>")
    for p in near["pairs"][:MAX_SHOWN]:
        notes = []
        if p["cross_split"]:
            notes.append(f"across splits ({p['a_split']} / {p['b_split']})")
        if p["label_conflict"]:
            notes.append(f"different labels ({p['a_label']} / {p['b_label']})")
        out.append(f"<tr><td>{thumbs.tag(p['a'], p['a_digest'])}</td><td>{_link(p['a'], root)}</td>"
                   f"<td>{thumbs.tag(p['b'], p['b_digest'])}</td><td>{_link(p['b'], root)}</td>"
                   f"<td class='num'>{p['similarity']:.3f}</td><td class='bad'>{_e('; '.join(notes))}</td></tr>")
    out.append("</table>")
    return out


def _skipped_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    root, skipped = data.get("image_dir"), data["skipped"]
    out = [f"<h2 id='skipped'>Skipped files ({len(skipped)})</h2>"]
    if not skipped:
        return [*out, "<p>None.</p>"]
    out.append("<table><tr><th>preview</th><th>file</th><th>reason</th></tr>")
    out += [f"<tr><td>{thumbs.tag(s['path'])}</td><td>{_link(s['path'], root)}</td>"
            f"<td>{_e(s['reason'])}</td></tr>" for s in skipped[:MAX_SHOWN * 5]]
    out.append("</table>")
    return out


def _balance_section(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    """Images per label and split, and the notes from training."""
    imb = data["imbalance"]
    out = [f"<h2 id='balance'>Label balance</h2><p>Largest / smallest label: <b>{imb['ratio']}</b>"
           + (" (above 3: consider more images of the small labels; training weights them up)."
              if (imb["ratio"] or 0) > 3 else ".") + "</p>"]
    top = max(imb["totals"].values() or [1]) or 1
    out.append("<table><tr><th>label</th><th>train</th><th>validation</th><th>test</th><th>total</th><th></th></tr>")
    for label in data["labels"]:
        c = imb["counts"].get(label, {})
        n = imb["totals"][label]
        out.append(f"<tr><td>{_e(label)}</td>" + "".join(f"<td class='num'>{c.get(s, 0)}</td>"
                                                         for s in ("train", "validation", "test"))
                   + f"<td class='num'>{n}</td><td><span class='bar' style='width:{int(200 * n / top)}px'></span></td></tr>")
    out.append("</table>")
    if data["notes"]:
        out.append("<h3>Notes from training</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in data["notes"])
                   + "</ul>")
    return out


def _page_end(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> list[str]:
    return [f"<p class='muted'>Analysis took {data['timings_s']['total']:.1f} s. Machine-readable: "
            "<a href='report.json'>report.json</a>, <a href='suspects.csv'>suspects.csv</a>.</p>",
            "</main></body></html>\n"]


# The page, top to bottom: each section gives its lines of HTML.
SECTIONS = (_page_top, _metrics_section, _figures_section, _misclassified_section, _suspects_section,
            _atypical_section, _exact_duplicates_section, _near_duplicates_section, _skipped_section,
            _balance_section, _page_end)


def render_html(data: dict, thumbs: Thumbs, figures: dict[str, str]) -> str:
    """The report page of ``data`` (what :func:`~tfguess.curate.report.analysis.analyse`
    returns), with the thumbnails of ``thumbs`` and the figure files ``figures``."""
    return "\n".join(line for section in SECTIONS for line in section(data, thumbs, figures))


def write_suspects_csv(path: Path, suspects: list[dict]) -> None:
    fields = ["rank", "path", "given", "suggested", "self_confidence", "suggested_prob", "split", "digest"]
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(suspects)


def summary_lines(data: dict, page: Path) -> list[str]:
    m = data["metrics"]
    near = data["near_duplicates"]
    note = figure_note(m)
    lines = [f"Report: {data['eval_split']} accuracy {_pct(m.get('accuracy'))} (n={m.get('n', 0)}"
             + (f"; {note})" if note else ")")]
    if data["worst_label"] and m.get("per_label") and m["per_label"][data["worst_label"]]["f1"] < 1:
        lines[0] += f"; weakest label {data['worst_label']} (F1 {m['per_label'][data['worst_label']]['f1']:.2f})"
    lines.append(f"  {_n(len(data['suspects']), 'suspected label error')}, "
                 f"{_n(len(data['exact_duplicates']), 'exact duplicate')}, "
                 f"{_n(len(near['pairs']), 'near-duplicate pair')} ({near['cross_split']} across splits), "
                 f"{_n(len(data['skipped']), 'skipped file')}")
    lines.extend(f"  warning: {text}" for text in data["warnings"])
    lines.append(f"  {page}")
    return lines
