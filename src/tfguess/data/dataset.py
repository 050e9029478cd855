"""Scan a folder of labelled images: checks, duplicates, conflicts and a stable split.

The folder holds one sub-folder per label (nested folders inside a label are allowed)::

    image_dir/ants/*.jpg
    image_dir/bees/more/*.png

Which files of a folder are images is :mod:`tfguess.data.folder_walk` (its names are importable
from here too).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tfguess.core.errors import DatasetError
from tfguess.core.fsutil import display_path, is_inside
from tfguess.data import images
from tfguess.data.folder_walk import (  # noqa: F401 - re-exported: importable from dataset
    JUNK_NAMES,
    Skipped,
    Walk,
    is_hidden,
    list_image_files,
    non_image_reason,
    walk,
    walk_files,
)

SPLITS = ("train", "validation", "test")

# A check decodes JPEGs at reduced scale (the whole stream is still read, so truncation is
# still caught) with at least this many pixels on the shorter side, enough for placeholder checks.
_CHECK_DRAFT = 128


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    digest: str  # sha256 hex of the file content
    split: str


@dataclass
class DatasetScan:
    root: Path
    labels: list[str]
    items: list[Item]
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (kept, duplicate)
    conflicts: list[tuple[str, list[Path], list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """label -> split -> number of images (every label and split present, zeros included)."""
        out = {label: dict.fromkeys(SPLITS, 0) for label in self.labels}
        for item in self.items:
            out[item.label][item.split] += 1
        return out

    def by_split(self, split: str) -> list[Item]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return [item for item in self.items if item.split == split]


def split_value(digest: str) -> float:
    """The stable position in [0, 1) of an image with content ``digest``."""
    h = hashlib.sha256(("split:" + digest).encode()).hexdigest()
    return int(h[:8], 16) / 2**32


def _check(path: Path, decode: bool, placeholders: bool = True) -> tuple[str | None, str | None]:
    """``(digest, reason)``: reason is None when the file is usable."""
    try:
        data = images.read_image_bytes(path)
    except images.ImageError as e:
        return None, e.reason
    digest = hashlib.sha256(data).hexdigest()
    try:
        if decode:
            img = images.decode_image(path, data=data, draft_size=_CHECK_DRAFT)
            reason = images.placeholder_reason(img) if placeholders else None
            if reason:
                return digest, reason
        else:
            images.check_header(path, data=data)
    except images.ImageError as e:
        return digest, e.reason
    return digest, None


def label_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a label (it must fit on one line of ``retrained_labels.txt``)."""
    bad = [c for c in name if ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"]
    if bad:
        return "it holds a line break or control character"
    if any("\udc80" <= c <= "\udcff" for c in name):
        return "it is not valid UTF-8"
    if name != name.strip():
        return "it starts or ends with a space"
    return None


def label_folders(root: Path) -> tuple[list[Path], list[str]]:
    """The label sub-folders of ``root`` and notes on what was passed over (files directly in it,
    hidden folders). Raises :class:`DatasetError` for a folder name that cannot be a label and for
    fewer than two label folders: cheap, so :func:`tfguess.training.train.train` calls it before any work.
    """
    notes: list[str] = []
    label_dirs: list[Path] = []
    loose = 0
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        is_dir = e.is_dir()
        if is_hidden(e.name):
            if is_dir and e.name.startswith(".") and e.name.lower() not in JUNK_NAMES:
                notes.append(f"ignored the hidden folder {display_path(e.path)}: a label cannot "
                             "start with '.'; rename it to use it as a label")
            continue
        if is_dir:
            label_dirs.append(Path(e.path))
        else:
            loose += 1
    bad_names = [(d, why) for d in label_dirs if (why := label_name_problem(d.name))]
    if bad_names:
        d, why = bad_names[0]
        more = f" (and {len(bad_names) - 1} more)" if len(bad_names) > 1 else ""
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in display_path(d))
        raise DatasetError(
            f"label folder '{shown}' cannot be a label name: {why}{more}. "
            "Rename the folder (one line of plain text, e.g. 'red_fox')"
        )
    if loose:
        notes.append(
            f"ignored {_plural(loose, 'file')} directly in {display_path(root)}: "
            "images must be inside a sub-folder named after their label"
        )
    if len(label_dirs) < 2:
        raise DatasetError(
            f"found {_plural(len(label_dirs), 'label folder')} in {display_path(root)}: need at "
            "least 2 sub-folders, one per label, each holding that label's images"
        )
    return label_dirs, notes


def _map(fn, args: list, progress: bool, desc: str) -> list:
    workers = min(8, (os.cpu_count() or 2) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it: Iterable = pool.map(fn, args)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(args), desc=desc, unit="img", dynamic_ncols=True)
        return list(it)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def assign_splits(
    digests: list[str], validation_pct: float = 10, test_pct: float = 10
) -> tuple[list[str], str | None]:
    """Splits for the images of one label (given by content digest), and a note when adjusted.

    Rule: each image has a stable position ``v = split_value(digest)`` in [0, 1), a function of
    its content only; ``v < validation_pct/100`` -> validation, ``v < (validation_pct +
    test_pct)/100`` -> test, else train. Adding or removing images never moves the others.
    Small labels, so that no split with a non-zero percentage is left empty:

    * 2 images: 1 train, 1 validation (the smaller ``v``), no test.
    * 1 image: train only.
    * 3 or more: an empty validation (then test, then train) split takes one image from the
      largest other split (train first on ties), the one with the smallest ``v``.

    Only these moved images can move again when the label grows past the point where the
    hash fills the split by itself.
    """
    if not 0 <= validation_pct < 100 or not 0 <= test_pct < 100:
        raise ValueError("validation and test percentages must be in [0, 100)")
    if validation_pct + test_pct >= 100:
        raise ValueError("validation + test percentages must leave room for training (< 100)")
    values = [split_value(d) for d in digests]
    v_cut, t_cut = validation_pct / 100, (validation_pct + test_pct) / 100
    splits = ["validation" if v < v_cut else "test" if v < t_cut else "train" for v in values]
    n = len(digests)
    order = sorted(range(n), key=lambda i: (values[i], digests[i]))
    if n == 0:
        return [], None
    if n <= 2:
        splits = ["train"] * n
        if n == 2 and validation_pct > 0:
            splits[order[0]] = "validation"
            return splits, "2 images: 1 train, 1 validation, none for test"
        return splits, f"{_plural(n, 'image')}: all used for training"
    wanted = [
        s for s, pct in zip(SPLITS, (100.0, validation_pct, test_pct), strict=True) if pct > 0
    ]
    moved: list[str] = []
    for target in ("validation", "test", "train"):
        if target not in wanted or target in splits:
            continue
        sizes = {s: splits.count(s) for s in SPLITS if s != target}
        donors = [s for s in ("train", "validation", "test") if sizes.get(s, 0) > 1]
        if not donors:
            continue
        donor = max(donors, key=lambda s: sizes[s])  # max keeps the first of equals: train
        i = next(i for i in order if splits[i] == donor)
        splits[i] = target
        moved.append(f"moved 1 image from {donor} to {target}")
    if not moved:
        return splits, None
    counts = ", ".join(f"{splits.count(s)} {s}" for s in SPLITS)
    return splits, f"{_plural(n, 'image')} ({counts}): {'; '.join(moved)} so that no split is empty"


def scan_dataset(
    image_dir: str | os.PathLike[str],
    *,
    validation_pct: float = 10,
    test_pct: float = 10,
    min_per_label: int = 2,
    decode_check: bool = True,
    placeholders: bool = True,
    follow_links: bool = False,
    progress: bool = True,
) -> DatasetScan:
    """Scan ``image_dir`` (one sub-folder per label) into a checked, split dataset.

    Bad files (zero-byte, not an image, truncated or corrupt, decompression bombs, and with
    ``decode_check`` placeholders and blank images) are skipped with a reason. Exact
    duplicates within a label are used once; the same content under two labels is a
    conflict: every copy is left out and reported. The split rule is in :func:`assign_splits`.
    Raises :class:`DatasetError` for fewer than two labels or a label with fewer than
    ``min_per_label`` usable images.
    """
    root = _checked_root(Path(image_dir), validation_pct, test_pct)
    label_dirs, notes = label_folders(root)
    labels = sorted(d.name for d in label_dirs)
    skipped: list[Skipped] = []
    files: list[tuple[str, Path]] = []
    for d in label_dirs:
        found = walk(d, follow_links=follow_links)
        skipped.extend(found.skipped)
        files.extend((d.name, p) for p in found.images)
    results = _map(lambda lp: _check(lp[1], decode_check, placeholders), files, progress,
                   "checking images")
    kept, duplicates, conflicts = _by_content(files, results, skipped)
    _require_enough(root, labels, kept, skipped, min_per_label)
    items: list[Item] = []
    for label in labels:
        entries = sorted(kept[label], key=lambda dp: dp[1])
        splits, note = assign_splits([d for d, _ in entries], validation_pct, test_pct)
        if note:
            notes.append(f"label '{label}': {note}")
        items.extend(Item(p, label, d, s) for (d, p), s in zip(entries, splits, strict=True))
    items.sort(key=lambda it: (it.label, it.path))
    skipped.sort(key=lambda s: s.path)
    duplicates.sort()
    conflicts.sort(key=lambda c: c[1])
    if duplicates:
        notes.append(f"{_plural(len(duplicates), 'exact duplicate')} counted once")
    if conflicts:
        notes.append(
            f"{_plural(len(conflicts), 'image')} found under two labels: left out (conflicts)"
        )
    return DatasetScan(root, labels, items, skipped, duplicates, conflicts, notes)


def _checked_root(root: Path, validation_pct: float, test_pct: float) -> Path:
    """``root``, once it is a folder and the split percentages are valid (else DatasetError)."""
    if not root.exists():
        raise DatasetError(
            f"image folder {root} does not exist: give a folder with one sub-folder per label"
        )
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: give a folder with one sub-folder per label")
    try:
        assign_splits([], validation_pct, test_pct)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    return root


def _by_content(files: list[tuple[str, Path]], results: list[tuple[str | None, str | None]],
                skipped: list[Skipped]):
    """``(kept, duplicates, conflicts)`` of the checked ``files``: ``kept`` maps a label to its
    ``(digest, path)`` of each content once; the content under two labels is left out (a
    conflict). What is not used is appended to ``skipped`` with its reason."""
    by_digest: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for (label, path), (digest, reason) in zip(files, results, strict=True):
        if reason is not None:
            skipped.append(Skipped(path, reason))
        else:
            by_digest[digest].append((label, path))
    duplicates: list[tuple[Path, Path]] = []
    conflicts: list[tuple[str, list[Path], list[str]]] = []
    kept: dict[str, list[tuple[str, Path]]] = defaultdict(list)  # label -> (digest, path)
    for digest, copies in by_digest.items():
        copies.sort()
        copy_labels = sorted({label for label, _ in copies})
        if len(copy_labels) > 1:
            paths = [p for _, p in copies]
            conflicts.append((digest, paths, copy_labels))
            for label, p in copies:
                others = ", ".join(f"'{x}'" for x in copy_labels if x != label)
                skipped.append(
                    Skipped(p, f"same image also under label {others}: left out (conflict)")
                )
            continue
        first = copies[0][1]
        duplicates.extend((first, p) for _, p in copies[1:])
        kept[copies[0][0]].append((digest, first))
    return kept, duplicates, conflicts


def _require_enough(root: Path, labels: list[str], kept: dict[str, list], skipped: list[Skipped],
                    min_per_label: int) -> None:
    """DatasetError when a label has fewer than ``min_per_label`` usable images, naming the
    first skipped files (those of the short labels first)."""
    too_few = [(label, len(kept[label])) for label in labels if len(kept[label]) < min_per_label]
    if not too_few:
        return
    detail = "; ".join(f"label '{label}' has {n}" for label, n in too_few)
    folders = ", ".join(str(root / label) for label, _ in too_few)
    extra = ""
    if skipped:
        first = sorted(skipped, key=lambda sk: not any(
            is_inside(sk.path, root / label) for label, _ in too_few))[:3]
        listed = "; ".join(f"{display_path(sk.path)}: {sk.reason}" for sk in first)
        more = f"; and {len(skipped) - len(first)} more" if len(skipped) > len(first) else ""
        extra = f" ({_plural(len(skipped), 'file')} skipped: {listed}{more})"
    raise DatasetError(
        f"too few usable images in {root}: {detail}, need at least {min_per_label} per "
        f"label{extra}. Add images to {folders} or remove the folder."
    )
