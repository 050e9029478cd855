"""The fault corpus: bad inputs, faults and interruptions, each through the real command line.

Every case asserts: no traceback, the expected exit code, the offending path named in the output,
the sources unchanged (hashes of the SRC tree before and after, links and special files included)
and nothing in DST overwritten (hashes of what DST held before). Most cases call
``tfguess.cli.main`` in-process (the same code path as the console script, much faster); those
about exit codes, tracebacks, hangs, signals, pipes and permissions run ``python -m tfguess`` in
a subprocess. Permission cases run the command as ``nobody`` (root ignores file modes): the
process imports what it needs as root, then drops to uid 65534 before parsing arguments.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import default_sigint
from PIL import Image

from tfguess.cli import main
from tfguess.core.fsutil import path_text
from tfguess.core.locks import LOCK_FILENAME, FolderBusyError, folder_lock
from tfguess.guess.journal import HEADER, TEMP_PREFIX


@contextmanager
def tmpfs(mnt: Path, size: str, fill=None):
    """A small tmpfs at ``mnt`` (root only, else the test is skipped), filled by ``fill(mnt)``
    and then remounted read-only when ``fill`` is given; unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        made = fill(mnt) if fill else None
        if fill:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield made
    finally:
        subprocess.run(["umount", str(mnt)])


REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "test_data"
DEMO_DATA = REPO / "tf_files" / "data"
FACE, NOT_FACE = TEST_DATA / "face_090.jpg", TEST_DATA / "not_face_091.jpg"
NOBODY = 65534
HEADER_LINE = ",".join(HEADER)


# ---------------------------------------------------------------------------------------------
# Running the command


@dataclass
class Done:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def check(r: Done, rc: int, *named: str) -> Done:
    """No traceback, exit code ``rc``, every string of ``named`` in the output."""
    assert "Traceback" not in r.text, r.text
    assert r.rc == rc, (r.rc, r.text)
    for name in named:
        assert name in r.text, (name, r.text)
    return r


def run_main(capsys, *args: str) -> Done:
    """``tfguess -q ARGS`` in this process."""
    capsys.readouterr()
    rc = main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return Done(rc, out, err)


_DROP = r"""
import os, sys
from tfguess.guess.predict import Predictor
Predictor.load(os.environ["TFGUESS_WARM_MODEL"], log=lambda *a: None)  # imports done as root
import tfguess.cli, tfguess.data.dataset, tfguess.guess.journal, tfguess.curate.report, tfguess.training.train
import concurrent.futures, csv, json, shutil, sysconfig, tempfile, unicodedata, zipfile
import tqdm, tqdm.auto
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(tfguess.cli.main(sys.argv[1:]))
"""


def run_cli(*args: str, nobody: bool = False, timeout: float = 120, env: dict | None = None,
            **popen) -> Done:
    """``python -m tfguess -q ARGS`` in a subprocess (as ``nobody`` with ``nobody=True``)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **(env or {}))
    head = [sys.executable, "-c", _DROP] if nobody else [sys.executable, "-m", "tfguess"]
    proc = subprocess.run([*head, "-q", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, **popen)
    return Done(proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------------------------------------
# Snapshots


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> its content hash, link target or file type (links not followed)."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            key = os.fsdecode(os.path.relpath(p, os.fsencode(root)))
            if stat.S_ISLNK(st.st_mode):
                out[key] = "link:" + os.fsdecode(os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                if name.endswith(b".csv"):
                    with open(p, "rb") as f:
                        out[key] = "csv:" + f.read().decode("utf-8", "surrogateescape")
                elif st.st_size > 64 << 20:  # a big sparse file: its size and mtime stand for it
                    out[key] = f"big:{st.st_size}:{st.st_mtime_ns}"
                else:
                    with open(p, "rb") as f:
                        out[key] = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                out[key] = "dir"
            else:
                out[key] = f"special:{stat.S_IFMT(st.st_mode)}"
    return out


class World:
    """SRC (two good photos to start with) and DST of one case; :meth:`seal` snapshots both, and
    the test's end checks that SRC is unchanged and that nothing DST held was overwritten."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.src = base / "src"
        self.dst = base / "dst"
        self.src.mkdir(parents=True)
        shutil.copy(FACE, self.src / "a.jpg")
        shutil.copy(NOT_FACE, self.src / "b.jpg")
        self.sealed: tuple[dict, dict] | None = None

    def seal(self) -> None:
        self.sealed = (tree(self.src), tree(self.dst))

    def verify(self) -> None:
        src_before, dst_before = self.sealed
        assert tree(self.src) == src_before, "a source was changed"
        dst_after = tree(self.dst)
        for name, digest in dst_before.items():
            if digest.startswith(("dir", "link:", "special:")) or name.startswith(TEMP_PREFIX):
                continue
            if Path(name).name.startswith(TEMP_PREFIX):
                continue  # an unfinished copy of a run that is gone: removed, as documented
            if name in dst_after and digest.startswith("csv:"):  # a manifest: appended to only
                assert dst_after[name].startswith(digest), f"{name} in DST was rewritten"
            elif name in dst_after:
                assert dst_after[name] == digest, f"{name} in DST was overwritten"

    def manifest_rows(self, name: str = "manifest.csv") -> list[dict]:
        with open(self.dst / name, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return list(csv.DictReader(f))

    def copies(self) -> list[Path]:
        return sorted(p for p in self.dst.rglob("*") if p.is_file() and not p.name.endswith(".csv")
                      and p.name != LOCK_FILENAME)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path / "w")
    yield w
    if w.sealed is not None:
        w.verify()


@pytest.fixture(scope="module")
def model(demo_trained) -> Path:
    return demo_trained


@pytest.fixture(scope="module")
def shared_base(model, tmp_path_factory):
    """A folder every user can reach (pytest's own is root-only), with a readable copy of the
    model and of the cached backbone engines, for the cases run as ``nobody``."""
    from tfguess.core.cachedir import cache_dir

    base = Path(tempfile.mkdtemp(prefix="tfguess-faults-"))
    os.chmod(base, 0o755)
    (base / "model").mkdir()
    shutil.copy(model / "model.keras", base / "model" / "model.keras")
    if (cache_dir() / "engines").is_dir():
        shutil.copytree(cache_dir() / "engines", base / "cache" / "engines")
    for p in [base, *base.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def nobody_world(shared_base, request):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the command as another user")
    base = shared_base / request.node.name.replace("[", "_").replace("]", "_")
    base.mkdir()
    os.chmod(base, 0o755)
    w = World(base)
    for p in [w.src, *w.src.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    env = {"TFGUESS_CACHE": str(shared_base / "cache"),
           "TFGUESS_WARM_MODEL": str(shared_base / "model")}
    w.env = env
    w.model = shared_base / "model"
    w.out = base / "out"  # a destination nobody may write to
    w.out.mkdir()
    os.chown(w.out, NOBODY, NOBODY)
    yield w
    if w.sealed is not None:
        w.verify()
    shutil.rmtree(base, ignore_errors=True)


def photo(path: Path, seed: int = 0, size=(320, 240), fmt: str | None = None) -> Path:
    """A photo-like picture (many colours): a real photo crop, shifted by ``seed``."""
    from skimage import data as skdata

    a = skdata.chelsea()[seed % 50: seed % 50 + size[1], seed % 80: seed % 80 + size[0]]
    Image.fromarray(np.ascontiguousarray(a)).save(path, fmt)
    return path


# ---------------------------------------------------------------------------------------------
# guess-dir: inputs that are not regular image files


@pytest.mark.slow
def test_fifo_named_jpg_is_skipped_not_waited_for(model, world):
    os.mkfifo(world.src / "x.jpg")
    world.seal()
    r = check(run_cli("guess-dir", model, world.src, world.dst, timeout=90), 1,
              "x.jpg", "named pipe")
    assert "Copied 2 image(s)" in r.text


@pytest.mark.slow
def test_link_to_dev_zero_named_jpg(model, world, capsys):
    (world.src / "zero.jpg").symlink_to("/dev/zero")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "zero.jpg", "a device")


@pytest.mark.slow
def test_unix_socket_in_src(model, world, capsys):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(world.src / "sock.png"))
    try:
        world.seal()
        check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "sock.png", "socket")
    finally:
        s.close()


@pytest.mark.slow
def test_big_sparse_non_image_is_not_read_whole(model, world, capsys):
    with open(world.src / "video.mp4", "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42")
        f.truncate(600 << 20)
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "video.mp4",
          "looks like a video")


@pytest.mark.slow
def test_big_sparse_file_named_jpg(model, world, capsys):
    with open(world.src / "huge.jpg", "wb") as f:
        f.truncate(300 << 20)
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "huge.jpg",
          "not an image")


@pytest.mark.slow
def test_broken_link(model, world, capsys):
    (world.src / "gone.jpg").symlink_to(world.base / "nowhere.jpg")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "gone.jpg", "broken link")


@pytest.mark.slow
def test_folder_named_jpg_is_ignored_without_recursive(model, world, capsys):
    (world.src / "folder.jpg").mkdir()
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    assert "Copied 2 image(s)" in r.text


# guess-dir: damaged or odd images


@pytest.mark.slow
def test_zero_byte_jpg(model, world, capsys):
    (world.src / "empty.jpg").write_bytes(b"")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "empty.jpg", "zero-byte")


@pytest.mark.slow
def test_truncated_jpeg(model, world, capsys):
    data = photo(world.base / "t.jpg").read_bytes()
    (world.src / "cut.jpg").write_bytes(data[: len(data) // 3])
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "cut.jpg",
          "truncated or corrupt JPEG")


@pytest.mark.slow
def test_png_with_bad_checksum_gets_a_clear_reason(model, world, capsys):
    data = bytearray(photo(world.base / "p.png", fmt="PNG").read_bytes())
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    (world.src / "crc.png").write_bytes(bytes(data))
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "crc.png",
              "checksum (CRC) error in its IHDR chunk")
    assert "BytesIO" not in r.text


@pytest.mark.slow
def test_jpeg_with_broken_exif_is_used_unrotated(model, world, capsys):
    good = photo(world.base / "e.jpg").read_bytes()
    # An APP1 Exif segment whose IFD offset points far outside the block.
    exif = b"Exif\x00\x00" + b"II*\x00" + (0xFFFFFF00).to_bytes(4, "little") + b"\x00" * 8
    segment = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    (world.src / "exif.jpg").write_bytes(good[:2] + segment + good[2:])
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0,
              "warning: Corrupt EXIF data")
    assert "Copied 3 image(s)" in r.text
    assert sum(1 for row in world.manifest_rows() if row["source"].endswith("exif.jpg")) == 1


@pytest.mark.slow
def test_exif_rotation_failure_falls_back_to_unrotated_pixels(model, world, capsys, monkeypatch):
    """Pillow 13 reads every broken EXIF block tried here; older ones raised when reading it:
    that failure is simulated to check the fallback, whichever decodes the JPEG (simplejpeg
    hands such a file to Pillow, whose rotation then fails the same way)."""
    from PIL import Image

    def broken(*a, **k):
        raise SyntaxError("not a TIFF file (header b'\\x00\\x00' not valid)")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "a.jpg",
              "EXIF orientation unreadable", "used without rotation")
    assert "Copied 2 image(s)" in r.text


@pytest.mark.slow
def test_web_page_saved_as_jpg(model, world, capsys):
    (world.src / "page.jpg").write_text("<!DOCTYPE html><html><body>404</body></html>")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "page.jpg", "web page")


@pytest.mark.slow
def test_text_file(model, world, capsys):
    (world.src / "notes.txt").write_text("holiday photos\n")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "notes.txt",
          "looks like text")


@pytest.mark.slow
def test_decompression_bomb(model, world, capsys):
    Image.new("1", (12000, 8000)).save(world.src / "bomb.png")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 1, "bomb.png",
          "decompression bomb")


@pytest.mark.slow
def test_extensionless_jpeg_copy_gets_jpg(model, world, capsys):
    shutil.copy(FACE, world.src / "IMG_0001")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    row = next(r for r in world.manifest_rows() if r["source"].endswith("IMG_0001"))
    assert row["destination"].endswith(".jpg")


@pytest.mark.slow
def test_extensionless_png_copy_gets_png(model, world, capsys):
    photo(world.src / "scan", fmt="PNG")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    row = next(r for r in world.manifest_rows() if r["source"].endswith("scan"))
    assert row["destination"].endswith(".png")


@pytest.mark.slow
def test_file_name_that_is_not_utf8(model, world):
    name = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(FACE, world.src / name)
    (world.src / os.fsdecode(b"r\xe9sum\xe9.txt")).write_text("not an image")
    world.seal()
    r = check(run_cli("guess-dir", model, world.src, world.dst), 1, "r\\xe9sum\\xe9.txt")
    assert "Copied 3 image(s)" in r.text  # the rest was processed
    sources = [row["source"] for row in world.manifest_rows()]
    assert str(world.src / name) in sources  # recorded as the exact bytes of the name
    again = check(run_cli("guess-dir", model, world.src, world.dst), 1)
    assert "3 image(s) already copied" in again.text


# guess-dir: links and folders


@pytest.mark.slow
def test_link_to_parent_with_recursive_does_not_escape(model, world, capsys):
    photo(world.base / "outside.jpg")
    (world.src / "up").symlink_to("..")
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst, "--recursive"), 1,
              "up", "not followed")
    assert not any("outside" in row["source"] for row in world.manifest_rows())
    assert "Copied 2 image(s)" in r.text


@pytest.mark.slow
def test_link_loop_inside_src(model, world, capsys):
    (world.src / "sub").mkdir()
    shutil.copy(FACE, world.src / "sub" / "c.jpg")
    (world.src / "sub" / "loop").symlink_to("..")
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst, "--recursive"), 1,
              "loop", "already scanned")
    assert "Copied 3 image(s)" in r.text


@pytest.mark.slow
def test_follow_links_flag_follows_outside_folder(model, world, capsys):
    (world.base / "more").mkdir()
    shutil.copy(FACE, world.base / "more" / "m.jpg")
    (world.src / "more").symlink_to(world.base / "more")
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst, "--recursive",
                       "--follow-links"), 0)
    assert "Copied 3 image(s)" in r.text


@pytest.mark.slow
def test_src_missing(model, world, capsys):
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.base / "nope", world.dst), 2, "nope",
          "check the path")


@pytest.mark.slow
def test_src_equals_dst(model, world, capsys):
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.src), 2, str(world.src))


@pytest.mark.slow
def test_dst_is_a_file(model, world, capsys):
    world.dst.write_text("a file")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 2, str(world.dst),
          "not a folder")


@pytest.mark.slow
def test_src_inside_dst_works_and_excludes_dst_outputs(model, world, capsys):
    src = world.dst / "face"  # the very folder a --by-label run writes the faces into
    src.mkdir(parents=True)
    shutil.copy(FACE, src / "x.jpg")
    shutil.copy(NOT_FACE, src / "y.jpg")
    world.src = src
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, src, world.dst, "--by-label"), 0)
    assert "Copied 2 image(s)" in r.text
    world.seal()  # SRC now holds a copy: DST's output, which must not be taken as a source
    r2 = check(run_main(capsys, "guess-dir", model, src, world.dst, "--by-label"), 0)
    assert "Copied 0 image(s)" in r2.text and "2 image(s) already copied" in r2.text
    r3 = check(run_main(capsys, "guess-dir", model, src, world.dst, "--by-label", "--again"), 0)
    assert "Copied 2 image(s)" in r3.text
    world.sealed = (tree(src), world.sealed[1])


@pytest.mark.slow
def test_dst_inside_src_is_not_scanned(model, world, capsys):
    dst = world.src / "sorted"
    world.dst = dst
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, dst, "--recursive"), 0)
    r = check(run_main(capsys, "guess-dir", model, world.src, dst, "--recursive", "--again"), 0)
    assert "Copied 2 image(s)" in r.text
    world.sealed = (tree(world.src), world.sealed[1])  # SRC now holds DST's copies


# guess-dir: the journal


@pytest.mark.slow
def test_foreign_manifest_is_never_appended_to(model, world, capsys):
    world.dst.mkdir()
    (world.dst / "manifest.csv").write_text("name,price\nbike,100\n")
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "manifest-1.csv",
              "header differs")
    assert (world.dst / "manifest.csv").read_text() == "name,price\nbike,100\n"
    assert len(world.manifest_rows("manifest-1.csv")) == 2
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    assert "2 image(s) already copied" in r.text


@pytest.mark.slow
def test_manifest_of_an_older_version_is_kept(model, world, capsys):
    world.dst.mkdir()
    old = "source,destination,label,score,top_k\n/x.jpg,/y.jpg,face,0.9,face:0.9\n"
    (world.dst / "manifest.csv").write_text(old)
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "manifest-1.csv")
    assert (world.dst / "manifest.csv").read_text() == old


@pytest.mark.slow
def test_empty_manifest_left_by_a_kill_gets_a_header(model, world, capsys):
    world.dst.mkdir()
    (world.dst / "manifest.csv").write_bytes(b"")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    assert (world.dst / "manifest.csv").read_text().startswith(HEADER_LINE + "\n")
    assert len(world.manifest_rows()) == 2


@pytest.mark.slow
def test_torn_last_manifest_line_is_repaired(model, world, capsys):
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    m = world.dst / "manifest.csv"
    text = m.read_text()
    m.write_text(text[:-40])  # the second row cut short, as by a power cut
    world.seal()
    torn = world.sealed[1].pop("manifest.csv")  # repaired: the torn line goes, the rest stays
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "repaired",
              "incomplete last line")
    rows = world.manifest_rows()
    assert len(rows) == 2 and len({r["source"] for r in rows}) == 2
    assert "1 image(s) already copied" in r.text
    assert m.read_text().count(HEADER_LINE) == 1
    whole = torn[len("csv:"):torn.rfind("\n") + 1]
    assert m.read_text().startswith(whole)


@pytest.mark.slow
def test_stale_temporary_copy_is_removed(model, world, capsys):
    world.dst.mkdir()
    dead = _dead_pid()
    (world.dst / f"{TEMP_PREFIX}{dead}.1.tmp").write_bytes(b"\xff\xd8\xff half a copy")
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "unfinished")
    assert not list(world.dst.glob(TEMP_PREFIX + "*"))


@pytest.mark.slow
def test_final_name_without_row_is_rolled_back(model, world, capsys):
    world.dst.mkdir()
    tmp = world.dst / f"{TEMP_PREFIX}{_dead_pid()}.1.tmp"
    shutil.copy(FACE, tmp)
    os.link(tmp, world.dst / "face-0.99955.jpg")  # killed between the link and the row
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "unfinished")
    rows = world.manifest_rows()
    assert sorted(Path(r["destination"]).name for r in rows) == sorted(
        p.name for p in world.copies())
    assert len(rows) == 2


@pytest.mark.slow
def test_rerun_resumes_and_says_how_many(model, world, capsys):
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0,
              "2 image(s) already copied")
    assert "Copied 0 image(s)" in r.text and len(world.copies()) == 2


@pytest.mark.slow
def test_changed_source_is_copied_again(model, world, capsys):
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    shutil.copy(TEST_DATA / "face_093.jpg", world.src / "a.jpg")
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0,
              "1 image(s) already copied")
    assert "Copied 1 image(s)" in r.text and len(world.copies()) == 3


@pytest.mark.slow
def test_again_copies_everything_under_new_names(model, world, capsys):
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst, "--again"), 0)
    assert "Copied 2 image(s)" in r.text and len(world.copies()) == 4
    assert len(world.manifest_rows()) == 4


@pytest.mark.slow
def test_deleted_copy_is_made_again(model, world, capsys):
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    world.copies()[0].unlink()
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0)
    assert "Copied 1 image(s)" in r.text


@pytest.mark.slow
def test_label_unknown_vs_min_score_bucket(model, world, capsys, monkeypatch):
    from tfguess.guess import predict

    real_load = predict.Predictor.load

    def load(*a, **k):
        p = real_load(*a, **k)
        p.labels = ["unknown" if lb == "face" else lb for lb in p.labels]
        return p

    monkeypatch.setattr(predict.Predictor, "load", staticmethod(load))
    world.seal()
    check(run_main(capsys, "guess-dir", model, world.src, world.dst, "--by-label",
                   "--min-score", "1.1"), 0)
    assert {p.parent.name for p in world.copies()} == {"_unknown"}


@pytest.mark.slow
def test_sigint_leaves_only_whole_copies(model, world):
    for i in range(40):
        photo(world.src / f"p{i:02d}.jpg", seed=i, size=(1600, 1200))
    world.seal()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "tfguess", "-q", "guess-dir", str(model),
                             str(world.src), str(world.dst), "--batch-size", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.time() + 60
    while time.time() < deadline and len(world.copies()) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    r = check(Done(proc.returncode, out, err), 130, "interrupted")
    assert r
    rows = {r["destination"]: r for r in world.manifest_rows()}
    assert sorted(rows) == sorted(str(p) for p in world.copies())
    for p in world.copies():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == rows[str(p)]["sha256"]


@pytest.mark.slow
def test_disk_full_during_copy(model, world):
    """A 600 kB tmpfs as DST: the run stops with one line naming DST, no half copy, rows whole."""
    with tmpfs(world.dst, "600k"):
        try:
            for i in range(12):
                photo(world.src / f"p{i:02d}.png", seed=i, size=(400, 300), fmt="PNG")  # ~300 kB each
            world.seal()
            r = check(run_cli("guess-dir", model, world.src, world.dst), 2, str(world.dst),
                      "disk is full")
            assert r.err.count("\n") == 1
            rows = {row["destination"]: row for row in world.manifest_rows()}
            assert sorted(rows) == sorted(str(p) for p in world.copies())
            assert not list(world.dst.glob(TEMP_PREFIX + "*"))
        finally:
            world.verify()
            world.sealed = None


# guess-dir / guess as an unprivileged user


@pytest.mark.slow
def test_unreadable_source_file(nobody_world):
    w = nobody_world
    shutil.copy(FACE, w.src / "secret.jpg")
    os.chmod(w.src / "secret.jpg", 0)
    w.seal()
    check(run_cli("guess-dir", w.model, w.src, w.out, nobody=True, env=w.env), 1,
          "secret.jpg", "Permission denied")


@pytest.mark.slow
def test_unreadable_sub_folder_is_reported(nobody_world):
    w = nobody_world
    (w.src / "private").mkdir()
    shutil.copy(FACE, w.src / "private" / "p.jpg")
    os.chmod(w.src / "private", 0)
    w.seal()
    check(run_cli("guess-dir", w.model, w.src, w.out, "--recursive", nobody=True,
                  env=w.env), 1, "private", "cannot read the folder")


@pytest.mark.slow
def test_dst_read_only(nobody_world):
    w = nobody_world
    w.dst.mkdir()
    os.chmod(w.dst, 0o755)  # owned by root: not writable for nobody
    w.seal()
    check(run_cli("guess-dir", w.model, w.src, w.dst, nobody=True, env=w.env), 2, str(w.dst),
          "Permission denied")


@pytest.mark.slow
def test_dst_parent_read_only(nobody_world):
    w = nobody_world
    w.seal()
    check(run_cli("guess-dir", w.model, w.src, w.base / "new" / "dst", nobody=True, env=w.env), 2,
          "new", "Permission denied")


@pytest.mark.slow
def test_model_unreadable(nobody_world):
    w = nobody_world
    locked = w.base / "locked.keras"
    shutil.copy(w.model / "model.keras", locked)
    os.chmod(locked, 0)
    w.seal()
    check(run_cli("guess", locked, w.src / "a.jpg", nobody=True, env=w.env), 2, "locked.keras")


# guess


@pytest.mark.slow
def test_guess_into_a_closed_pipe_exits_quietly(model):
    images = [str(p) for p in sorted(TEST_DATA.iterdir())]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = (f"{sys.executable} -m tfguess -q guess {model} {' '.join(images)} | true; "
           "echo rc=${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert "rc=141" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_guess_fifo_does_not_hang(model, tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    check(run_cli("guess", model, tmp_path / "pipe.jpg", FACE, timeout=90), 1, "pipe.jpg",
          "named pipe")


@pytest.mark.slow
def test_guess_a_folder(model, tmp_path, capsys):
    check(run_main(capsys, "guess", model, tmp_path), 1, str(tmp_path), "folder")


@pytest.mark.slow
def test_guess_missing_image(model, tmp_path, capsys):
    check(run_main(capsys, "guess", model, tmp_path / "nope.jpg"), 1, "nope.jpg", "not found")


def test_model_missing(tmp_path, capsys):
    check(run_main(capsys, "guess", tmp_path / "none.keras", FACE), 2, "none.keras",
          "model not found")


@pytest.mark.slow
def test_model_with_corrupted_member(model, tmp_path):
    """Every member's data damaged (the zip directory intact): BadZipFile (bad CRC) inside."""
    bad = tmp_path / "bad.keras"
    data = bytearray((model / "model.keras").read_bytes())
    with zipfile.ZipFile(model / "model.keras") as z:
        for info in z.infolist():
            start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            n = min(info.compress_size, 64)
            data[start: start + n] = bytes(b ^ 0x5A for b in data[start: start + n])
    bad.write_bytes(bytes(data))
    check(run_cli("guess", bad, FACE), 2, "bad.keras")


def test_model_is_a_text_file(tmp_path, capsys):
    (tmp_path / "m.keras").write_text("not a model")
    check(run_main(capsys, "guess", tmp_path / "m.keras", FACE), 2, "m.keras")


@pytest.mark.slow
def test_bad_flag_value(model, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["guess-dir", str(model), "a", "b", "--min-score", "high"])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# train: label folders (refused before any work, so these are quick)


def _demo_copy(base: Path, per_label: int = 12) -> Path:
    data = base / "tf_files" / "data"
    for label in ("face", "not_face"):
        (data / label).mkdir(parents=True)
        for p in sorted((DEMO_DATA / label).iterdir())[:per_label]:
            shutil.copy(p, data / label / p.name)
    return base / "tf_files"


def test_label_with_newline_is_refused_before_work(tmp_path, capsys):
    tf = _demo_copy(tmp_path)
    (tf / "data" / "two\nlines").mkdir()
    shutil.copy(FACE, tf / "data" / "two\nlines" / "x.jpg")
    before = tree(tf)
    r = check(run_main(capsys, "train", tf), 2, "two\\nlines", "line break")
    assert tree(tf) == before and "Found" not in r.text


def test_label_with_control_character(tmp_path, capsys):
    tf = _demo_copy(tmp_path)
    (tf / "data" / "bell\x07").mkdir()
    before = tree(tf)
    check(run_main(capsys, "train", tf), 2, "bell", "control character")
    assert tree(tf) == before


def test_label_name_not_utf8(tmp_path, capsys):
    tf = _demo_copy(tmp_path)
    (tf / "data" / os.fsdecode(b"f\xe9e")).mkdir()
    check(run_main(capsys, "train", tf), 2, "f\\xe9e", "not valid UTF-8")


def test_one_label_only(tmp_path, capsys):
    tf = _demo_copy(tmp_path)
    shutil.rmtree(tf / "data" / "face")
    check(run_main(capsys, "train", tf), 2, str(tf / "data"), "need at least 2")


def test_image_dir_missing(tmp_path, capsys):
    check(run_main(capsys, "train", tmp_path / "tf"), 2, "data", "not found")


@pytest.mark.slow
def test_train_tf_files_read_only(tmp_path):
    """TF_FILES on a read-only file system (a tmpfs remounted read-only: root cannot write either)."""
    with tmpfs(tmp_path / "ro", "20m", _demo_copy) as tf:
        before = tree(tf)
        r = check(run_cli("train", tf, "--quick", "--epochs", "2", "--no-report", timeout=300), 2, str(tf),
                  "read-only")
        assert r.err.count("\n") == 1
        assert tree(tf) == before


@pytest.mark.slow
def test_export_coreml_float16_is_refused(model, tmp_path):
    shutil.copytree(model, tmp_path / "tf", ignore=shutil.ignore_patterns("bottlenecks"))
    r = run_cli("export", tmp_path / "tf", "--format", "coreml", "--quantize", "float16",
                timeout=300)
    check(r, 2, "float16", "tflite")


@pytest.mark.slow
def test_evaluate_refuses_features_of_another_backbone(model, tmp_path, capsys):
    import json

    tf = tmp_path / "tf"
    shutil.copytree(model, tf)
    summary = json.loads((tf / "run_summary.json").read_text())
    summary["bottleneck_key"] = "efficientnet_lite2-260-000000000000"
    (tf / "run_summary.json").write_text(json.dumps(summary))
    check(run_main(capsys, "evaluate", tf), 2, "run_summary.json", "another backbone")


# ---------------------------------------------------------------------------------------------
# train: one run over a data folder holding many kinds of bad input at once


@pytest.fixture(scope="module")
def messy_train(tmp_path_factory):
    base = tmp_path_factory.mktemp("messy")
    tf = _demo_copy(base, per_label=20)
    data = tf / "data"
    os.mkfifo(data / "face" / "fifo.jpg")
    (data / "face" / "zero.jpg").symlink_to("/dev/zero")
    (data / "face" / "loop").symlink_to("..")
    (data / "face" / "gone.jpg").symlink_to(base / "gone.jpg")
    shutil.copy(DEMO_DATA / "face" / "face_050.png", data / "face" / os.fsdecode(b"caf\xe9.png"))
    (data / ".thumbnails").mkdir()
    (data / "face" / "notes.txt").write_text("taken at the fair")
    # An "Image not available" placeholder: flat grey, anti-aliased text, dozens of colours.
    from PIL import ImageDraw, ImageFont

    ph = Image.new("RGB", (400, 300), (214, 214, 214))
    draw = ImageDraw.Draw(ph)
    font = ImageFont.load_default(size=28)
    draw.text((200, 150), "Image not available", fill=(90, 90, 90), font=font, anchor="mm")
    ph.save(data / "not_face" / "placeholder.png")
    n_colours = len(ph.getcolors(10_000))
    before = tree(tf / "data")
    r = run_cli("train", tf, "--quick", "--epochs", "5", "--no-report", timeout=600)
    return r, before, tf, n_colours


@pytest.mark.slow
@pytest.mark.parametrize("name,reason", [
    ("fifo.jpg", "named pipe"),
    ("zero.jpg", "a device"),
    ("loop", "not followed"),
    ("gone.jpg", "broken link"),
    ("notes.txt", "looks like text"),
    ("placeholder.png", "placeholder"),
])
def test_train_lists_each_bad_input(messy_train, name, reason):
    r, before, tf, _ = messy_train
    check(r, 0)
    line = next((ln for ln in r.text.splitlines() if name in ln), "")
    assert reason in line, (name, r.text)
    assert tree(tf / "data") == before


@pytest.mark.slow
def test_train_with_non_utf8_name_and_hidden_folder(messy_train):
    r, before, tf, n_colours = messy_train
    check(r, 0, "hidden folder", ".thumbnails")
    assert 40 <= n_colours <= 256  # anti-aliased text, as the placeholder
    assert (tf / "model.keras").exists()
    labels = (tf / "retrained_labels.txt").read_text().splitlines()
    assert labels == ["face", "not_face"]


def test_keep_placeholders_and_line_art(tmp_path):
    from PIL import ImageDraw

    from tfguess.data.dataset import scan_dataset

    data = tmp_path / "data"
    for label in ("drawing", "other"):
        (data / label).mkdir(parents=True)
    for i in range(4):  # line art: black outlines on white, spread over the picture
        im = Image.new("RGB", (300, 300), "white")
        d = ImageDraw.Draw(im)
        d.ellipse((20 + i, 20, 280, 200 + i), outline="black", width=3)
        d.line((10, 290, 290 - i * 5, 10), fill="black", width=3)
        d.rectangle((40, 220, 260, 280), outline="black", width=2)
        im.save(data / "drawing" / f"d{i}.png")
        photo(data / "other" / f"o{i}.jpg", seed=i)
    ph = Image.new("RGB", (300, 300), (200, 200, 200))
    ImageDraw.Draw(ph).text((150, 150), "Image not available", fill=(60, 60, 60), anchor="mm")
    ph.save(data / "other" / "na.png")
    scan = scan_dataset(data, progress=False)
    assert {s.path.name for s in scan.skipped} == {"na.png"}
    kept = scan_dataset(data, progress=False, placeholders=False)
    assert not kept.skipped


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_no_gpu_probe_chatter_without_a_gpu(model):
    """The Keras engine imports TensorFlow: its device probe says nothing on stderr."""
    r = check(run_cli("guess", "--engine", "keras", model, FACE, timeout=300), 0, "face")
    assert "cuInit" not in r.err and "cuda" not in r.err.lower(), r.err


# ---------------------------------------------------------------------------------------------
# Runs that meet: one writer at a time in DST and TF_FILES, and on the review page

WAITING = "waiting — Ctrl-C to stop"
_HOLD = """
import sys
from tfguess.core.locks import folder_lock
with folder_lock(sys.argv[1], sys.argv[2], name=sys.argv[3]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def holding(folder: Path, what: str, name: str = LOCK_FILENAME):
    """Another process holding ``folder``'s lock for the block (as a run writing there would)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), what, name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert proc.stdout.readline().strip() == "held"
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(30)


def _meet():
    sys.path.insert(0, str(REPO / "bench"))
    import concurrency_check

    return concurrency_check


def test_lock_no_wait_names_the_run_holding_it(tmp_path):
    with holding(tmp_path, "guess-dir") as other:
        with pytest.raises(FolderBusyError) as exc:
            with folder_lock(tmp_path, "guess-dir", wait=False):
                pass
    assert str(exc.value).startswith(f"another guess-dir is writing into {tmp_path} "
                                     f"(pid {other.pid})")
    with folder_lock(tmp_path, "guess-dir", wait=False):  # free again once the holder is done
        pass
    assert not (tmp_path / LOCK_FILENAME).exists()


def test_lock_waiter_says_whom_it_waits_for_then_goes_on(tmp_path):
    said, order = [], []
    with holding(tmp_path, "train") as other:
        def second():
            with folder_lock(tmp_path, "train", log=said.append):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        deadline = time.monotonic() + 10
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        order.append("first done")
    t.join(10)
    assert said == [f"another train is writing into {tmp_path} (pid {other.pid}); {WAITING}"]
    assert order == ["first done", "second"]


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    """flock goes with its process, however it ends: a killed run leaves its lock file, never
    its lock."""
    with holding(tmp_path, "guess-dir") as other:
        other.kill()
        other.wait()
        assert (tmp_path / LOCK_FILENAME).read_text().startswith(f"{other.pid} ")
        said = []
        with folder_lock(tmp_path, "guess-dir", wait=False, log=said.append):
            assert (tmp_path / LOCK_FILENAME).read_text() == f"{os.getpid()} guess-dir\n"
        assert said == [] and not (tmp_path / LOCK_FILENAME).exists()


def test_lock_keeps_threads_of_one_process_apart(tmp_path):
    """Two threads (e.g. two requests to the server) each with their own lock object: one at a
    time; the same thread may take it again (the command line holds it around train())."""
    inside, most = [0], [0]

    def work():
        for _ in range(20):
            with folder_lock(tmp_path, "train"):
                with folder_lock(tmp_path, "train"):
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                    time.sleep(0.001)
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1


def test_train_no_wait_exits_2_naming_the_other_run(tmp_path, capsys):
    tf = _demo_copy(tmp_path, per_label=2)
    with holding(tf, "train") as other:
        before = tree(tf)
        r = check(run_main(capsys, "train", tf, "--no-wait"), 2,
                  f"another train is writing into {tf} (pid {other.pid})", "--no-wait")
        assert r.err.count("\n") == 1 and tree(tf) == before


def test_review_moves_of_one_image_from_many_editors_are_serialised(tmp_path, monkeypatch):
    """The server makes an editor per request: 8 requests moving the same image at once, each
    through its own editor, move it once. The move is slowed down so that unserialised editors
    would all pass the "is it still there" check (and leave copies behind)."""
    from tfguess.curate import relabel
    from tfguess.curate.relabel import DataSetEditor, RelabelError

    data = tmp_path / "data"
    for label in ("a", "b", "c"):
        (data / label).mkdir(parents=True)
    shutil.copy(FACE, data / "a" / "x.jpg")
    real = relabel._move_no_overwrite

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(relabel, "_move_no_overwrite", slow)
    results, barrier = [], threading.Barrier(8)

    def request(i: int) -> None:
        ed = DataSetEditor(tmp_path, data, ["a", "b", "c"])
        barrier.wait()
        try:
            results.append(ed.move(data / "a" / "x.jpg", "b" if i % 2 else "c"))
        except (RelabelError, OSError) as e:
            results.append(e)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    moved = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, RelabelError)]
    assert len(moved) == 1 and len(refused) == 7, results
    assert all("no such file" in str(e) for e in refused)
    files = [p for p in data.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0] == tmp_path / moved[0].destination
    assert len(DataSetEditor(tmp_path, data, ["a", "b", "c"]).journal()) == 1


def test_review_page_on_a_read_only_tf_files(tmp_path):
    """TF_FILES on a read-only file system: a move is refused in one line, nothing changes."""
    from tfguess.curate.relabel import DataSetEditor, RelabelError

    with tmpfs(tmp_path / "ro", "4m", lambda mnt: _demo_copy(mnt, per_label=2)) as tf:
        before = tree(tf)
        ed = DataSetEditor(tf, tf / "data", ["face", "not_face"])
        image = next((tf / "data" / "face").iterdir())
        with pytest.raises(RelabelError) as exc:
            ed.move(image, "not_face")
        assert "read-only" in str(exc.value) and str(tf) in str(exc.value)
        assert "\n" not in str(exc.value) and ed.journal() == []
        assert tree(tf) == before


def test_relabel_journal_with_a_damaged_row(tmp_path):
    """A hand-damaged row of relabel-journal.csv is left out; the others still count and the
    page goes on (it used to answer 500)."""
    from tfguess.curate.relabel import DataSetEditor

    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
    shutil.copy(FACE, data / "a" / "x.jpg")
    shutil.copy(NOT_FACE, data / "a" / "y.jpg")
    ed = DataSetEditor(tmp_path, data, ["a", "b"])
    ed.move(data / "a" / "x.jpg", "b")
    with open(ed.journal_path, "a") as f:
        f.write("seven,2026-01-01,move,data/a/q.jpg\n\"unclosed,\n")
    change = ed.move(data / "a" / "y.jpg", "b")
    assert [c.id for c in ed.journal()] == [1, change.id] and change.id == 2
    assert ed.current_path(data / "a" / "y.jpg") == data / "b" / "y.jpg"


# guess-dir: the manifest, line by line


def _manifest(rows: list[list[str]]) -> str:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    return buf.getvalue()


def _row(i: int, source: str | None = None) -> list[str]:
    return [source or f"/src/p{i}.jpg", f"/dst/face-0.{i:05d}.jpg", "face", f"0.{i:05d}",
            f"face:0.{i:05d}", f"{i:064x}", "sha256:0123456789abcdef"]


def test_manifest_line_starting_with_a_quote_costs_that_line_only(tmp_path):
    from tfguess.guess.journal import read_manifest

    lines = _manifest([_row(i) for i in range(1, 9)]).split("\n")
    lines[3] = '"' + lines[3]     # file line 4: the third row
    lines[6] = "\x00garbage"      # file line 7
    (tmp_path / "manifest.csv").write_text("\n".join(lines))
    read = read_manifest(tmp_path / "manifest.csv")
    assert [e.source for e in read.entries] == [f"/src/p{i}.jpg" for i in (1, 2, 4, 5, 7, 8)]
    assert [n for n, _ in read.damaged] == [4, 7]
    assert read.note == "dropped 2 damaged line(s): line 4, 7"


def test_manifest_row_of_a_file_name_with_line_breaks_is_one_row(tmp_path):
    from tfguess.guess.journal import read_manifest

    text = _manifest([_row(1), _row(2, "/src/two\nline,\"name\".jpg"), _row(3)])
    (tmp_path / "manifest.csv").write_text(text + "/src/torn")
    read = read_manifest(tmp_path / "manifest.csv")
    assert [e.source for e in read.entries] == ["/src/p1.jpg", "/src/two\nline,\"name\".jpg",
                                                "/src/p3.jpg"]
    assert read.damaged == [] and read.torn_tail


def test_file_names_as_text_round_trip():
    """Names that are not UTF-8 (Latin-1, Shift-JIS, invalid bytes) and a backslash: valid
    Unicode text with \\xNN escapes (JSON, CSV, web pages) that converts back to the same bytes."""
    from tfguess.core.fsutil import path_text, text_path

    for raw in (b"caf\xe9.jpg", b"\x83e\x83X\x83g.jpg", b"bad\xff\xfe.jpg", b"a\\xe9\\\\b.jpg",
                "été/写真.jpg".encode(), b"plain.jpg"):
        name = os.fsdecode(raw)
        text = path_text(name)
        text.encode("utf-8")  # no surrogates left
        assert text_path(text) == name
    assert path_text(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert path_text("été.jpg") == "été.jpg"


# train and serve: stages added since this corpus was written


def test_fine_tune_setting_out_of_range_is_refused_before_work(tmp_path, capsys):
    tf = _demo_copy(tmp_path, per_label=2)
    before = tree(tf)
    check(run_main(capsys, "train", tf, "--fine-tune", "--fine-tune-blocks", "-1"), 2,
          "fine_tune_blocks must be 0 or more")
    assert tree(tf) == before


@pytest.mark.slow
def test_serve_a_damaged_model(model, tmp_path):
    tf = tmp_path / "tf"
    shutil.copytree(model, tf, ignore=shutil.ignore_patterns("bottlenecks"))
    data = (tf / "model.keras").read_bytes()
    (tf / "model.keras").write_bytes(data[: len(data) // 2])
    r = check(run_cli("serve", tf, "--port", "1", timeout=120), 2, "model.keras", "damaged")
    assert r.err.count("\n") == 1


@pytest.mark.slow
def test_export_out_is_a_file(model, tmp_path, capsys):
    shutil.copytree(model, tmp_path / "tf", ignore=shutil.ignore_patterns("bottlenecks"))
    (tmp_path / "out").write_text("not a folder")
    check(run_main(capsys, "export", tmp_path / "tf", "--out", tmp_path / "out"), 2, "out")
    assert (tmp_path / "out").read_text() == "not a folder"


@pytest.mark.slow
def test_export_into_a_folder_whose_target_exists_keeps_it(model, tmp_path, capsys):
    tf = tmp_path / "tf"
    shutil.copytree(model, tf, ignore=shutil.ignore_patterns("bottlenecks"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.tflite").write_bytes(b"an earlier export")
    check(run_main(capsys, "export", tf, "--out", out), 0,
          "Kept the previous model.tflite as model.previous.tflite")
    assert (out / "model.previous.tflite").read_bytes() == b"an earlier export"
    assert (out / "model.tflite").read_bytes()[4:8] == b"TFL3"


# guess-dir: runs that meet in one DST


@pytest.mark.slow
def test_guess_dir_waits_for_the_run_writing_into_dst(model, world):
    world.dst.mkdir()
    world.seal()
    with holding(world.dst, "guess-dir") as other:
        busy = check(run_cli("guess-dir", model, world.src, world.dst, "--no-wait"), 2,
                     f"another guess-dir is writing into {world.dst} (pid {other.pid})")
        assert busy.err.count("\n") == 1 and not world.copies()
        proc = subprocess.Popen([sys.executable, "-m", "tfguess", "-q", "guess-dir", str(model),
                                 str(world.src), str(world.dst)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
        line = proc.stdout.readline()
        assert line.strip() == (f"another guess-dir is writing into {world.dst} "
                                f"(pid {other.pid}); {WAITING}")
        time.sleep(0.5)
        assert not world.copies()  # still waiting
    out, err = proc.communicate(timeout=120)
    r = check(Done(proc.returncode, line + out, err), 0, "Copied 2 image(s)")
    assert r and not (world.dst / LOCK_FILENAME).exists()


@pytest.mark.slow
def test_lock_file_left_by_a_killed_guess_dir_is_taken_over(model, world, capsys):
    world.dst.mkdir()
    (world.dst / LOCK_FILENAME).write_text(f"{_dead_pid()} guess-dir\n")
    world.seal()
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "Copied 2 image(s)")
    assert WAITING not in r.text and not (world.dst / LOCK_FILENAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("runs,again", [(2, False), (4, False), (2, True), (4, True)])
def test_concurrent_guess_dir_runs_into_one_dst(model, tmp_path, runs, again):
    """Runs started together into one new DST (the full 20 tries: bench/concurrency_check.py):
    every source once (with --again once a run), one well-formed row a copy, one header."""
    meet = _meet()
    sources = meet.make_src(tmp_path / "src", 8)
    for i in range(2):
        dst = tmp_path / f"dst{i}"
        results = meet.run_guess_dirs(model, tmp_path / "src", dst, runs, again)
        assert meet.check_dst(dst, sources, runs if again else 1, results) == []
        assert sum(WAITING in text for _, text in results) <= runs - 1


@pytest.mark.slow
def test_manifest_quote_line_rerun_copies_nothing_again(model, world, capsys):
    """A line that begins with a quote used to swallow every row after it, and their sources were
    copied again. Now it costs that line, and since its copy is still in DST with the digest the
    line gives, its row is recorded again. A line whose source cannot be told (a comma turned
    into a semicolon) is dropped: that one source is copied again, its old copy stays."""
    for i in range(4):
        photo(world.src / f"p{i}.jpg", seed=i)
    check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0, "Copied 6 image(s)")
    m = world.dst / "manifest.csv"
    lines = m.read_text().split("\n")
    lines[2] = '"' + lines[2]                          # file line 3
    lost = dict(zip(HEADER, next(csv.reader([lines[5]]))))
    lines[5] = lines[5].replace(".jpg,", ".jpg;", 1)  # file line 6
    m.write_text("\n".join(lines))
    world.seal()
    world.sealed[1].pop("manifest.csv")  # repaired: rewritten
    r = check(run_main(capsys, "guess-dir", model, world.src, world.dst), 0,
              "dropped 2 damaged line(s): line 3, 6",
              "1 of them recorded again from their copies in DST (same digest; not copied twice): "
              "line 3", "5 image(s) already copied", "Copied 1 image(s)")
    assert r
    rows = world.manifest_rows()
    assert sorted(row["source"] for row in rows) == sorted(str(p) for p in world.src.iterdir())
    assert m.read_text().count(HEADER_LINE) == 1
    unrecorded = {str(p) for p in world.copies()} - {row["destination"] for row in rows}
    assert unrecorded == {lost["destination"]}


# train: runs that meet in one TF_FILES, and file names from other systems


@pytest.mark.slow
def test_two_concurrent_trains_on_one_tf_files(tmp_path):
    """Both end with a loadable model, an intact cache and report; the second says it waited
    (the 10 tries: bench/concurrency_check.py train)."""
    meet = _meet()
    tf = meet.make_tf_files(tmp_path / "tf_files", 6)
    before = tree(tf / "data")
    results = meet.run_trains(tf, args=("--epochs", "3"))
    assert meet.check_tf_files(tf, results) == []
    assert sum(WAITING in text for _, text in results) == 1
    assert tree(tf / "data") == before


ODD_NAMES = [b"caf\xe9.png", b"\x83e\x83X\x83g.png", b"bad\xff\xfe.png"]  # Latin-1, Shift-JIS, not UTF-8


@pytest.fixture(scope="module")
def odd_tf(tmp_path_factory):
    """A TF_FILES whose label folders hold names in Latin-1, Shift-JIS and invalid UTF-8 (faces
    filed under not_face, so they are suspects on the review page) and a non-image with such a
    name; trained with its report through the command line."""
    base = tmp_path_factory.mktemp("odd")
    tf = _demo_copy(base, per_label=8)
    faces = sorted((DEMO_DATA / "face").iterdir())[40:]
    for raw, src in zip(ODD_NAMES, faces):
        shutil.copy(src, os.path.join(os.fsencode(tf / "data" / "not_face"), raw))
        shutil.copy(src, os.path.join(os.fsencode(tf / "data" / "face"), b"f-" + raw))
    with open(os.path.join(os.fsencode(tf / "data" / "face"), b"notes-\xe9.txt"), "w") as f:
        f.write("not an image")
    r = run_cli("train", tf, "--quick", "--epochs", "5", timeout=600)
    return r, tf


@pytest.mark.slow
def test_odd_file_names_train_and_evaluate(odd_tf, capsys):
    r, tf = odd_tf
    check(r, 0, "notes-\\xe9.txt", "Report:")
    check(run_main(capsys, "evaluate", tf), 0, "Report:")
    page = (tf / "report" / "index.html").read_text(encoding="utf-8")  # valid UTF-8 throughout
    assert "notes-\\xe9.txt" in page
    json.loads((tf / "report" / "report.json").read_text(encoding="utf-8"))
    with open(tf / "report" / "suspects.csv", newline="", encoding="utf-8",
              errors="surrogateescape") as f:
        suspects = list(csv.DictReader(f))
    assert all(os.path.lexists(s["path"]) for s in suspects)  # the names' own bytes


@pytest.mark.slow
def test_odd_file_names_on_the_review_page(odd_tf):
    """The review page's JSON and thumbnails, and a move and its undo, with names that are not
    UTF-8: paths travel as text with \\xNN escapes and are turned back into the exact bytes."""
    from fastapi.testclient import TestClient

    from tfguess.serve import create_app

    _, tf = odd_tf
    with TestClient(create_app(tf, log=lambda *_: None), base_url="http://127.0.0.1") as client:
        listed = client.get("/api/review")
        assert listed.status_code == 200, listed.text
        paths = [it["path"] for it in listed.json()["items"]]
        paths += [f"data/not_face/{path_text(os.fsdecode(raw))}" for raw in ODD_NAMES]
        for path in paths:
            thumb = client.get("/api/review/image", params={"path": path})
            assert thumb.status_code == 200, (path, thumb.text)
            assert thumb.headers["content-type"] == "image/jpeg"
            with Image.open(io.BytesIO(thumb.content)) as im:
                assert im.size[0] > 0
        html = client.get("/review").text
        headers = {"X-Tfguess-Token": html.split('name="tfguess-token" content="', 1)[1]
                   .split('"', 1)[0]}
        raw = ODD_NAMES[0]
        moved = client.post("/api/review/move", headers=headers, json={
            "path": f"data/not_face/{path_text(os.fsdecode(raw))}", "label": "face"})
        assert moved.status_code == 200, moved.text
        assert moved.json()["destination"] == "data/face/caf\\xe9.png"
        assert os.path.lexists(os.path.join(os.fsencode(tf / "data" / "face"), raw))
        listed = client.get("/api/review")
        assert listed.status_code == 200, listed.text
        assert [c["destination"] for c in listed.json()["changes"]] == ["data/face/caf\\xe9.png"]
        assert client.get("/api/review/image",
                          params={"path": "data/face/caf\\xe9.png"}).status_code == 200
        back = client.post("/api/review/undo", json={"id": moved.json()["id"]}, headers=headers)
        assert back.status_code == 200, back.text
        assert os.path.lexists(os.path.join(os.fsencode(tf / "data" / "not_face"), raw))
    journal = (tf / "relabel-journal.csv").read_bytes()
    journal.decode("utf-8")  # valid UTF-8: the names as escapes
    assert b"caf\\xe9.png" in journal


@pytest.mark.slow
def test_odd_file_names_guess_dir(odd_tf, tmp_path, capsys):
    _, tf = odd_tf
    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(tf / "data" / "not_face", src)
    r = check(run_main(capsys, "guess-dir", tf, src, dst), 0)
    r.text.encode("utf-8")  # no lone surrogates: whatever names were printed, were escaped
    with open(dst / "manifest.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        sources = {os.fsencode(row["source"]) for row in csv.DictReader(f)}
    assert {os.path.join(os.fsencode(src), n) for n in ODD_NAMES} <= sources
    (src / os.fsdecode(b"x-\xe9.txt")).write_text("not an image")
    check(run_main(capsys, "guess-dir", tf, src, dst), 1, "x-\\xe9.txt")


def test_ray_address_where_nothing_answers_is_one_line_at_once():
    """`--ray HOST:PORT` with no cluster there: one line naming the address, not minutes of
    Ray's own retries."""
    from tfguess.core.errors import ConfigError
    from tfguess.guess.distributed import connect

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        connect(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 10
    message = str(exc.value)
    assert f"127.0.0.1:{port}" in message and "ray start --head" in message and "\n" not in message


# --- the command line: faults found by adversarial cases ---

def test_suggest_refuses_a_count_below_one(tmp_path, capsys):
    """`suggest --n -1` listed all but one photo (a negative slice) and exited 0."""
    from conftest import DEMO_DATA

    tf_files, pile = tmp_path / "tf", tmp_path / "pile"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    pile.mkdir()
    for photo in sorted((tf_files / "data").rglob("*.jpg"))[:3]:
        shutil.copy(photo, pile / photo.name)
    for bad in ("-1", "0"):
        with pytest.raises(SystemExit) as stop:
            main(["-q", "suggest", str(tf_files), str(pile), "--n", bad])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "argument --n: must be at least 1" in err, err


def test_a_time_limit_below_a_second_is_refused(tmp_path, capsys):
    """`--time-limit 0.0001s` was accepted and planned as "0 s"."""
    r = run_main(capsys, "train", tmp_path / "tf", "--time-limit", "0.0001s")
    check(r, 2, "invalid duration '0.0001s': give at least 1 s")


# --- the inbox: faults found by adversarial cases ---

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inbox_world(tmp_path):
    """TF_FILES with 4 demo photos a label in data/, an inbox of 6 others a label, and a feature
    cache holding every demo photo (conftest.demo_inbox)."""
    from conftest import demo_inbox

    return demo_inbox(tmp_path, in_pile=slice(40, 46))


def _journal_rows(tf_files: Path) -> list[dict]:
    with open(tf_files / "inbox-journal.csv", newline="") as f:
        return list(csv.DictReader(f))


@contextmanager
def _inbox_client(tf_files: Path, pile: Path):
    """The inbox's API on a test client (server errors answered as 500, not raised), and the
    headers of a write from the page."""
    pytest.importorskip("fastapi")
    import re

    from starlette.testclient import TestClient

    from tfguess.serve import create_app

    app = create_app(tf_files, log=lambda *_: None, inbox_dir=pile, inbox_every=0)
    with TestClient(app, base_url="http://127.0.0.1:8080", raise_server_exceptions=False) as client:
        page = client.get("/inbox")
        token = re.search(r'name="tfguess-token" content="([^"]+)"', page.text).group(1)
        yield client, {"X-Tfguess-Token": token, "Origin": "http://127.0.0.1:8080"}


def _names(client) -> list[str]:
    answer = client.get("/api/inbox")
    assert answer.status_code == 200, answer.text
    return [item["name"] for item in answer.json()["items"]]


def test_inbox_two_pages_on_one_tf_files_copy_a_photo_once(inbox_world, monkeypatch):
    """Two servers on one TF_FILES labelling one photo at the same moment made two copies
    (X.png, X-1.png) with two journal rows: each checked the journal, then copied. The check and
    the copy now hold the review page's lock of TF_FILES; the second is refused."""
    from tfguess.curate import inbox_actions
    from tfguess.curate.inbox import Inbox, InboxError

    tf_files, pile = inbox_world
    first, second = (Inbox(tf_files, pile, auto_every=0, log=lambda *_: None) for _ in range(2))
    both_checked = threading.Barrier(2, timeout=1)
    real_copy = inbox_actions.copy_no_overwrite

    def copy_when_both_checked(*args, **kwargs):  # the race, made certain
        try:
            both_checked.wait()
        except threading.BrokenBarrierError:
            pass
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(inbox_actions, "copy_no_overwrite", copy_when_both_checked)
    errors = []

    def label(inbox):
        try:
            inbox.label("face_040.png", "face")
        except InboxError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=label, args=(ib,)) for ib in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(p.name for p in (tf_files / "data" / "face").glob("face_040*")) == ["face_040.png"]
    assert len(errors) == 1 and "labelled already" in errors[0], errors
    rows = _journal_rows(tf_files)
    assert len(rows) == 1 and [r["id"] for r in rows] == ["1"]


@pytest.mark.slow
def test_inbox_two_server_processes_label_each_photo_once(inbox_world, tmp_path):
    """The same across processes (two `serve --inbox` on one TF_FILES): both label every photo of
    the inbox at once; each photo is copied once and the journal's ids are unique."""
    tf_files, pile = inbox_world
    script = tmp_path / "label_all.py"
    script.write_text(
        "import sys, time\n"
        "from tfguess.curate import inbox_actions\n"
        "from tfguess.curate.inbox import Inbox, InboxError\n"
        "real = inbox_actions.copy_no_overwrite\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.2)  # a slow disk: the window between the check and the copy\n"
        "    return real(*a, **k)\n"
        "inbox_actions.copy_no_overwrite = slow\n"
        "ib = Inbox(sys.argv[1], sys.argv[2], auto_every=0, log=lambda *_: None)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "done = 0\n"
        "for name in list(ib.pending()):\n"
        "    try:\n"
        "        ib.label(name, 'not_face' if name.startswith('not_face') else 'face')\n"
        "        done += 1\n"
        "    except InboxError as e:\n"
        "        assert 'labelled already' in str(e), e\n"
        "print(done, flush=True)\n")
    originals = {p.name for p in (tf_files / "data").rglob("*.png")}
    procs = [subprocess.Popen([sys.executable, str(script), str(tf_files), str(pile)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # both start labelling at the same moment
        p.stdin.write("go\n")
        p.stdin.flush()
    done = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(done) == 12
    copies = sorted(p.name for p in (tf_files / "data").rglob("*.png") if p.name not in originals)
    assert copies == sorted(p.name for p in pile.iterdir())  # one copy each, none named X-1
    rows = _journal_rows(tf_files)
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert sorted(r["source"] for r in rows) == sorted(p.name for p in pile.iterdir())


def test_inbox_photo_deleted_while_served_is_404_then_gone(inbox_world):
    """A photo deleted from the inbox folder while the page was open: its thumbnail answered 500
    (FileNotFoundError) and it stayed listed. Now: 404, and the list read again leaves it out."""
    tf_files, pile = inbox_world
    with _inbox_client(tf_files, pile) as (client, headers):
        assert "face_041.png" in _names(client)
        (pile / "face_041.png").unlink()
        thumb = client.get("/api/inbox/image", params={"name": "face_041.png"})
        assert thumb.status_code == 404 and "no longer in the inbox folder" in thumb.json()["detail"]
        labelled = client.post("/api/inbox/label", json={"name": "face_041.png", "label": "face"},
                               headers=headers)
        assert labelled.status_code in (404, 409), labelled.text
        names = _names(client)
        assert "face_041.png" not in names and len(names) == 11
        gone = client.get("/api/inbox/image", params={"name": "face_041.png"})
        assert gone.status_code == 404
    assert not (tf_files / "data" / "face" / "face_041.png").exists()


def test_inbox_photo_replaced_while_served_is_read_again(inbox_world):
    """A photo replaced in the inbox folder (same name, new content) answered 409 "reload the
    page" for ever: the folder was never read again. Now the list read again scores the new
    content, and labelling it copies the new content with its own digest."""
    tf_files, pile = inbox_world
    other = sorted((DEMO_DATA / "not_face").iterdir())[70]  # a not_face photo, not in the inbox
    with _inbox_client(tf_files, pile) as (client, headers):
        before = {i["name"]: i for i in client.get("/api/inbox").json()["items"]}
        assert before["face_042.png"]["top"][0][0] == "face"
        shutil.copyfile(other, pile / "face_042.png")
        after = {i["name"]: i for i in client.get("/api/inbox").json()["items"]}
        assert after["face_042.png"]["top"][0][0] == "not_face"  # the new content, classified
        labelled = client.post("/api/inbox/label", json={"name": "face_042.png",
                                                         "label": "not_face"}, headers=headers)
        assert labelled.status_code == 200, labelled.text
        assert labelled.json()["sha256"] == _sha(other)
    copy = tf_files / "data" / "not_face" / "face_042.png"
    assert copy.read_bytes() == other.read_bytes()


def test_inbox_photo_added_while_served_appears(inbox_world):
    """A photo added to the inbox folder while the server ran never appeared. Now it does on
    the next reload of the list, scored."""
    tf_files, pile = inbox_world
    new = sorted((DEMO_DATA / "not_face").iterdir())[71]
    with _inbox_client(tf_files, pile) as (client, headers):
        assert len(_names(client)) == 12
        shutil.copy2(new, pile / "new-photo.png")
        items = {i["name"]: i for i in client.get("/api/inbox").json()["items"]}
        assert len(items) == 13 and items["new-photo.png"]["top"][0][0] == "not_face"
        thumb = client.get("/api/inbox/image", params={"name": "new-photo.png"})
        assert thumb.status_code == 200
        labelled = client.post("/api/inbox/label", json={"name": "new-photo.png",
                                                         "label": "not_face"}, headers=headers)
        assert labelled.status_code == 200, labelled.text


@contextmanager
def _unwritable(path: Path):
    """``path`` cannot be written for the block: mode 0444, or (as root, who ignores modes) the
    immutable attribute; skipped where neither works."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("root ignores file modes and chattr +i does not work here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_inbox_journal_not_writable_labels_nothing(inbox_world):
    """inbox-journal.csv not writable: labelling answered 409 but left the copy in data/<label>/
    with no journal row; labelled again once writable, a second copy appeared that no undo
    removed. Now a label is its copy and its row or neither, and the message names the file."""
    from tfguess.curate.inbox import Inbox, InboxError

    tf_files, pile = inbox_world
    journal = tf_files / "inbox-journal.csv"
    inbox = Inbox(tf_files, pile, auto_every=0, log=lambda *_: None)
    inbox.label("not_face_040.png", "not_face")
    before = sorted(p.name for p in (tf_files / "data" / "face").iterdir())
    with _unwritable(journal):
        with pytest.raises(InboxError) as refused:
            inbox.label("face_043.png", "face")
        message = str(refused.value)
        assert str(journal) in message and "writable" in message and "\n" not in message
        assert sorted(p.name for p in (tf_files / "data" / "face").iterdir()) == before
        with pytest.raises(InboxError, match="inbox-journal.csv"):
            inbox.none_of_these("face_044.png")
        with pytest.raises(InboxError, match="inbox-journal.csv"):
            inbox.undo()
        assert (tf_files / "data" / "not_face" / "not_face_040.png").is_file()  # not undone
    done = inbox.label("face_043.png", "face")
    assert done["destination"] == "data/face/face_043.png"  # its own name: no -1 copy
    inbox.undo()
    assert sorted(p.name for p in (tf_files / "data" / "face").iterdir()) == before
    assert [r["action"] for r in _journal_rows(tf_files)] == ["copy", "copy", "undo"]


def test_inbox_suggest_refuses_a_count_below_one(inbox_world):
    """`Inbox.suggest(-1)` listed all but the last photo (a negative slice); 0 listed none."""
    from tfguess.core.errors import ConfigError
    from tfguess.curate.inbox import Inbox

    tf_files, pile = inbox_world
    inbox = Inbox(tf_files, pile, auto_every=0, log=lambda *_: None)
    for bad in (-1, 0):
        with pytest.raises(ConfigError, match="--n") as refused:
            inbox.suggest(bad)
        assert "at least 1" in str(refused.value)
    assert len(inbox.suggest(1)) == 1


# --- the pages: faults found by adversarial cases ---


def _page_token(client) -> dict:
    """The page token header the review page's script sends (its write check)."""
    html = client.get("/review").text
    return {"X-Tfguess-Token": html.split('name="tfguess-token" content="', 1)[1].split('"', 1)[0]}


def _no_model_tf(tmp_path: Path, summary: bool = False) -> Path:
    """A TF_FILES with labelled photos and no model (``summary``: and a run summary naming its
    labels, as a training that failed after its scan would leave)."""
    tf = tmp_path / "tf"
    for label in ("face", "not_face"):
        (tf / "data" / label).mkdir(parents=True)
        shutil.copy(sorted((DEMO_DATA / label).iterdir())[0], tf / "data" / label)
    if summary:
        (tf / "run_summary.json").write_text(json.dumps({"labels": ["face", "not_face"]}))
    return tf


def _retrain_through_the_page(client, headers: dict) -> dict:
    started = client.post("/api/review/retrain", headers=headers)
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + 600
    while (state := client.get("/api/review/retrain").json())["state"] == "running":
        assert time.monotonic() < deadline, "the re-training did not end in 10 minutes"
        time.sleep(0.5)
    assert state["state"] == "done", state
    return state


@pytest.mark.slow
def test_pages_undo_stays_offered_after_a_retrain_and_the_undone_error_is_flagged_again(
        demo_trained, tmp_path):
    """A change made before a Re-train could no longer be undone from the review page (the page
    offered Undo only on a tile of the report, which the new report no longer lists), and after
    an undo the page offered no Re-train (an undo did not count as a change since the report), so
    the undone wrong label was never flagged again. The journal now says which changes are in
    effect and undoable and which wait for a re-training, across re-trains and restarts."""
    from fastapi.testclient import TestClient

    from tfguess.core.config import TrainConfig
    from tfguess.curate.report import write_report
    from tfguess.serve import create_app
    from tfguess.training.train import train

    tf = tmp_path / "tf"
    shutil.copytree(demo_trained, tf)
    planted, original = "face_001.png", "data/not_face/face_001.png"
    shutil.move(tf / "data" / "face" / planted, tf / original)
    summary = json.loads((tf / "run_summary.json").read_text())
    train(tf, TrainConfig.from_dict({**summary["config"], "report": True}), progress=False,
          log=lambda *_: None)
    write_report(tf, log=lambda *_: None)

    def flagged(state: dict) -> list:
        return [i for i in state["items"] if i["path"] == original and i["where"] == "data"]

    with TestClient(create_app(tf, log=lambda *_: None), base_url="http://127.0.0.1") as client:
        headers = _page_token(client)
        review = lambda: client.get("/api/review").json()  # noqa: E731
        assert flagged(review()), "the planted label error is not flagged"
        moved = client.post("/api/review/move", headers=headers,
                            json={"path": original, "label": "face"})
        assert moved.status_code == 200, moved.text
        assert review()["pending"] == 1
        _retrain_through_the_page(client, headers)
        state = review()
        assert not flagged(state) and state["pending"] == 0
        assert [(c["id"], c["undoable"]) for c in state["changes"]] == [(moved.json()["id"], True)]
    # a restart of the server: the journal is on disk, the change is still undoable
    with TestClient(create_app(tf, log=lambda *_: None), base_url="http://127.0.0.1") as client:
        headers = _page_token(client)
        review = lambda: client.get("/api/review").json()  # noqa: E731
        assert [c["undoable"] for c in review()["changes"]] == [True]
        back = client.post("/api/review/undo", headers=headers, json={"id": moved.json()["id"]})
        assert back.status_code == 200, back.text
        state = review()
        assert state["pending"] == 1, "the undo waits for a re-training: the page must offer it"
        assert [(c["action"], c["undone"], c["undoable"]) for c in state["changes"]] == [
            ("move", True, False), ("undo", False, False)]
        _retrain_through_the_page(client, headers)
        state = review()
        assert flagged(state) and state["pending"] == 0, state["items"]
        assert flagged(state)[0]["kind"] == "suspect"


def test_pages_home_without_a_model_says_what_to_do_and_links_the_inbox(tmp_path):
    """A TF_FILES with photos and no model: the home page showed "engine: null" and no way to
    the inbox page, where such a TF_FILES is trained."""
    from fastapi.testclient import TestClient

    from tfguess.serve import create_app

    tf = _no_model_tf(tmp_path)
    with TestClient(create_app(tf, log=lambda *_: None), base_url="http://127.0.0.1") as client:
        card = client.get("/api/model").json()
        assert (card["model"], card["inbox"], card["review"]) == (False, True, False)
        page = client.get("/").text
        assert 'href="/inbox"' in page and "No model yet" in page
        assert client.get("/inbox").status_code == 200


@pytest.mark.slow
def test_pages_a_tf_files_started_from_nothing_gets_its_report(tmp_path):
    """The first training on the inbox page (train_from_nothing) wrote no evaluation report, so
    /report/ and the review page stayed empty for that TF_FILES."""
    from fastapi.testclient import TestClient

    from tfguess.curate.inbox_start import MIN_PHOTOS_PER_LABEL, train_from_nothing
    from tfguess.serve import create_app

    tf = tmp_path / "tf"
    for label in ("face", "not_face"):
        (tf / "data" / label).mkdir(parents=True)
        for photo in sorted((DEMO_DATA / label).iterdir())[:MIN_PHOTOS_PER_LABEL + 1]:
            shutil.copy(photo, tf / "data" / label)
    train_from_nothing(tf, log=lambda *_: None)
    assert (tf / "report" / "index.html").is_file() and (tf / "report" / "report.json").is_file()
    assert json.loads((tf / "run_summary.json").read_text())["config"]["report"] is True
    with TestClient(create_app(tf, log=lambda *_: None), base_url="http://127.0.0.1") as client:
        assert client.get("/api/model").json()["report"] is True
        assert client.get("/report/").status_code == 200
        assert client.get("/api/review").json()["report"] is True


def test_pages_docs_predict_has_a_file_picker_and_a_real_example(tmp_path):
    """/docs: "Try it out" on /api/predict showed no file picker until "Add string item" (and
    Swagger UI asked for a component it lacks, JsonSchema_string_binary); the 200 answer's
    example read "string"."""
    from fastapi.testclient import TestClient

    from tfguess.serve import create_app

    with TestClient(create_app(_no_model_tf(tmp_path), log=lambda *_: None),
                    base_url="http://127.0.0.1") as client:
        spec = client.get("/openapi.json").json()
        page = client.get("/docs").text
    op = spec["paths"]["/api/predict"]["post"]
    body = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["items"] == {"type": "string", "format": "binary"}
    assert "JsonSchema_string_binary" in page and "FilePickerPlugin" in page
    answer = op["responses"]["200"]["content"]["application/json"]
    assert answer["schema"]["items"] == {"$ref": "#/components/schemas/PredictResult"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["PredictResult"]["properties"]) == {"path", "error", "predictions",
                                                           "model_digest"}
    assert set(schemas["Prediction"]["properties"]) == {"label", "score"}
    first = answer["example"][0]
    assert first["error"] is None and first["model_digest"].startswith("sha256:")
    assert [set(p) for p in first["predictions"]] == [{"label", "score"}] * 2
    assert sum(p["score"] for p in first["predictions"]) == pytest.approx(1)


def test_pages_a_nul_byte_in_a_name_is_never_a_5xx(tmp_path):
    """A file name or path with a NUL byte answered 500 (ValueError: embedded null byte): an
    upload on the inbox page (now saved under the name without it), and the review page's
    thumbnails, files, moves and take-outs."""
    from fastapi.testclient import TestClient

    from tfguess.serve import create_app

    tf = _no_model_tf(tmp_path, summary=True)
    photo = sorted((DEMO_DATA / "face").iterdir())[0].read_bytes()
    boundary = "tfguess-nul-test"
    upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
              f"filename=\"a\0b.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + photo + (
        f"\r\n--{boundary}--\r\n").encode()
    with TestClient(create_app(tf, log=lambda *_: None), base_url="http://127.0.0.1",
                    raise_server_exceptions=False) as client:
        headers = _page_token(client)
        r = client.post("/api/inbox/photos", params={"label": "face"}, content=upload, headers={
            **headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
        # the photo is saved under its name without the control character
        assert r.status_code == 200 and r.json()["added"] == ["ab.png"], r.text
        for path in ("data/face/a\0b.png", "data/face/a\\x00b.png"):
            for route in ("/api/review/image", "/api/review/file"):
                r = client.get(route, params={"path": path})
                assert r.status_code == 404, (route, path, r.status_code, r.text)
            for body in ({"path": path, "label": "not_face"}, {"path": path}):
                r = client.post("/api/review/move", headers=headers, json=body)
                assert r.status_code == 409 and "NUL byte" in r.json()["detail"], (body, r.text)
    assert sorted(p.name for p in (tf / "data" / "face").iterdir()) == sorted([
        sorted((DEMO_DATA / "face").iterdir())[0].name, "ab.png"])


@pytest.mark.slow
def test_inbox_sort_leaves_the_report_of_the_model_it_trained(tmp_path):
    """"Sort the inbox" trained the model with report=False: the report left behind described
    the older model (or none), so /report/ and the review page did not match what was served."""
    from conftest import demo_inbox

    from tfguess.curate.inbox import Inbox

    tf, pile = demo_inbox(tmp_path, in_data=12, in_pile=slice(40, 43), features=False)
    inbox = Inbox(tf, pile, log=lambda *_: None)
    result = inbox.finish(log=lambda *_: None)
    assert not result.skipped
    report = json.loads((tf / "report" / "report.json").read_text())
    summary = json.loads((tf / "run_summary.json").read_text())
    assert report["all_metrics"] == {s: {"n": m["n"], "accuracy": m["accuracy"]}
                                     for s, m in summary["metrics"].items()}
    assert report["metrics"] == summary["metrics"][report["eval_split"]]


def test_inbox_upload_with_a_nul_byte_in_its_name_is_saved_under_a_clean_name(tmp_path):
    """An upload to the inbox page whose file name held a NUL byte failed the whole request
    (`ValueError: embedded null byte`); it is one photo like any other, its name cleaned."""
    from tfguess.curate.inbox_start import add_photo

    photo = sorted((DEMO_DATA / "face").iterdir())[0]
    saved = add_photo(tmp_path / "tf", "face", "holiday\x00\x01.jpg", photo.read_bytes())
    assert saved == tmp_path / "tf" / "data" / "face" / "holiday.jpg"
    assert saved.read_bytes() == photo.read_bytes()
