"""Which files of a folder are images: :func:`walk` lists them, and every other path it passes
over with the reason (hidden names, links out of the folder, devices, files that are no image).
Only a file's first bytes are read here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tfguess.core.fsutil import display_path, is_inside
from tfguess.data import images

# Names that are never images and never worth a report (besides hidden .names).
JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx", "@eadir"}


@dataclass(frozen=True)
class Skipped:
    """A path passed over, and why (one short line)."""

    path: Path
    reason: str


def is_hidden(name: str) -> bool:
    """Hidden (``.name``) or system junk (``Thumbs.db``, ``__MACOSX``): passed over silently."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


@dataclass
class Walk:
    """What :func:`walk` found: image files, and every other path with why it is not used."""

    images: list[Path]
    skipped: list[Skipped]


def walk(
    folder: str | os.PathLike[str],
    *,
    recursive: bool = True,
    exclude: Path | None = None,
    exclude_files: set[Path] | frozenset[Path] = frozenset(),
    follow_links: bool = False,
) -> Walk:
    """The image files under ``folder`` (sorted), and every path passed over with its reason.

    Images are regular files with an image extension (any case), or with another extension or
    none whose first bytes say image; only those first bytes are read here. Named pipes, devices
    and sockets are never opened for reading. Hidden files and folders (``.name``) and system junk
    (``Thumbs.db``, ``__MACOSX``) are ignored without a word. A file reachable under two names
    (links) is listed once, under its first name in sorted order. Links to files are followed; a
    link to a folder only when the folder lies inside ``folder`` (or with ``follow_links``), and a
    folder reached twice (a link loop) is scanned once. The ``exclude`` subtree (e.g. an output folder inside the input folder)
    and the ``exclude_files`` (resolved paths) are passed over silently.
    """
    walker = _Walker(Path(folder), recursive, exclude, exclude_files, follow_links)
    if walker.root.is_dir():
        walker.folder(walker.root)
    return Walk(sorted(walker.found), sorted(walker.skipped, key=lambda s: s.path))


class _Walker:
    """:func:`walk`'s state: the rules, what was seen (by device and inode) and what was found."""

    def __init__(self, root: Path, recursive: bool, exclude: Path | None,
                 exclude_files: set[Path] | frozenset[Path], follow_links: bool) -> None:
        self.root, self.recursive, self.follow_links = root, recursive, follow_links
        self.real_root = Path(os.path.realpath(root))
        self.excl = Path(exclude).resolve() if exclude is not None else None
        self.exclude_files = exclude_files
        self.seen_files: set[tuple[int, int]] = set()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.found: list[Path] = []
        self.skipped: list[Skipped] = []

    def folder(self, d: Path) -> None:
        """Scan the folder ``d`` (once), its entries in name order."""
        try:
            st = d.stat()
        except OSError as e:
            self.skipped.append(Skipped(d, f"cannot read the folder: {e.strerror or e}"))
            return
        if self.excl is not None and is_inside(d.resolve(), self.excl):
            return
        if (st.st_dev, st.st_ino) in self.seen_dirs:
            self.skipped.append(Skipped(d, "folder already scanned (a link loop or a second link "
                                           "to it)"))
            return
        self.seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            self.skipped.append(Skipped(d, f"cannot read the folder: {e.strerror or e}: check its "
                                           "permissions (ls -ld)"))
            return
        for e in entries:
            if not is_hidden(e.name):
                self.entry(e)

    def entry(self, e: os.DirEntry) -> None:
        """One folder entry: a folder to scan (or a link not to follow), or a file."""
        p = Path(e.path)
        try:
            is_link = e.is_symlink()
            is_dir = e.is_dir()  # follows links
        except OSError:
            is_link, is_dir = False, False
        if is_dir and is_link and not self.follow_links:
            target = Path(os.path.realpath(p))
            if not is_inside(target, self.real_root):
                self.skipped.append(Skipped(p, f"a link to {display_path(target)}, outside "
                                               f"{display_path(self.root)}: not followed "
                                               "(--follow-links follows it)"))
                return
        if is_dir:
            if self.recursive:
                self.folder(p)
            return
        self.file(e, p)

    def file(self, e: os.DirEntry, p: Path) -> None:
        """A file: an image (once per device and inode), or passed over with its reason."""
        try:
            st = e.stat()
        except OSError:
            self.skipped.append(Skipped(p, "broken link"))
            return
        if p.resolve() in self.exclude_files:
            return
        kind = images.file_kind(st.st_mode)
        if kind is not None:
            self.skipped.append(Skipped(p, f"{kind}, not a regular file: skipped"))
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen_files:
            return
        self.seen_files.add(key)
        if p.suffix.lower() in images.IMAGE_EXTENSIONS or images.sniff(p):
            self.found.append(p)
        else:
            self.skipped.append(Skipped(p, non_image_reason(p)))


def walk_files(
    folder: str | os.PathLike[str], *, recursive: bool = True, exclude: Path | None = None
) -> tuple[list[Path], list[Path]]:
    """``(images, others)`` under ``folder``, each sorted (see :func:`walk` for the rules)."""
    w = walk(folder, recursive=recursive, exclude=exclude)
    return w.images, [s.path for s in w.skipped]


def list_image_files(
    folder: str | os.PathLike[str], *, recursive: bool = True, exclude: Path | None = None
) -> list[Path]:
    """The image files under ``folder``, sorted (see :func:`walk` for the rules)."""
    return walk(folder, recursive=recursive, exclude=exclude).images


def non_image_reason(path: Path) -> str:
    """Why a file that :func:`walk` passed over is not used, e.g. "broken link" (reads its head
    only)."""
    if not path.exists():
        return "broken link"
    try:
        head = images.read_head(path)
        if not head:
            return "zero-byte file"
        if images.sniff(path) is None and os.stat(path).st_size > images.MAX_UNKNOWN_BYTES:
            return images.not_image_reason(head)
        images.check_header(path)
    except images.ImageError as e:
        return e.reason
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    return "not an image file"  # pragma: no cover - walk would have called it an image
