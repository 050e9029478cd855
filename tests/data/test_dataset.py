import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image
from skimage import data as skdata

from tfguess.data import images
from tfguess.data.dataset import (
    SPLITS,
    DatasetError,
    assign_splits,
    list_image_files,
    scan_dataset,
    split_value,
    walk_files,
)

PHOTOS = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket()]



def photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A distinct real-photo crop for each seed."""
    rng = np.random.default_rng(seed)
    src = PHOTOS[seed % len(PHOTOS)]
    h, w = size[1], size[0]
    y = int(rng.integers(0, src.shape[0] - h))
    x = int(rng.integers(0, src.shape[1] - w))
    return Image.fromarray(src[y : y + h, x : x + w])


def make_images(folder: Path, seeds, ext: str = ".jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in seeds:
        p = folder / f"img{s:04d}{ext}"
        photo(s).save(p)
        paths.append(p)
    return paths


def scan(root, **kw):
    kw.setdefault("progress", False)
    return scan_dataset(root, **kw)


def splits_by_path(result) -> dict[Path, str]:
    return {it.path: it.split for it in result.items}


def test_basic_scan_counts_and_order(tmp_path):
    make_images(tmp_path / "zebra", range(0, 12))
    make_images(tmp_path / "apple" / "nested" / "deeper", range(100, 112), ext=".PNG")
    result = scan(tmp_path)
    assert result.labels == ["apple", "zebra"]
    assert len(result.items) == 24 and not result.skipped
    assert [(it.label, it.path) for it in result.items] == sorted(
        (it.label, it.path) for it in result.items
    )
    counts = result.counts()
    assert set(counts) == {"apple", "zebra"}
    for label in counts:
        assert set(counts[label]) == set(SPLITS) and sum(counts[label].values()) == 12
        assert all(counts[label][s] >= 1 for s in SPLITS)
    assert sum(len(result.by_split(s)) for s in SPLITS) == 24
    item = result.items[0]
    assert item.digest == hashlib.sha256(item.path.read_bytes()).hexdigest()
    assert item.split == result.by_split(item.split)[0].split


def test_split_is_stable_when_images_are_added_or_removed(tmp_path):
    make_images(tmp_path / "a", range(0, 60))
    make_images(tmp_path / "b", range(1000, 1060))
    before = scan(tmp_path, decode_check=False)
    assert not any("moved" in n for n in before.notes)
    assert all(before.counts()[lb][s] > 0 for lb in ("a", "b") for s in SPLITS)

    make_images(tmp_path / "a", range(60, 100))
    make_images(tmp_path / "b", range(1060, 1100))
    make_images(tmp_path / "c", range(2000, 2040))  # a new label too
    after = scan(tmp_path, decode_check=False)
    assert len(after.items) == 240
    old, new = splits_by_path(before), splits_by_path(after)
    assert all(new[p] == s for p, s in old.items())

    for p in list(old)[::3]:
        p.unlink()
    fewer = splits_by_path(scan(tmp_path, decode_check=False))
    assert all(fewer[p] == new[p] for p in fewer)


def test_split_is_a_function_of_content_only(tmp_path):
    make_images(tmp_path / "a", range(0, 30))
    make_images(tmp_path / "b", range(100, 130))
    first = scan(tmp_path, decode_check=False)
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "a", moved / "x" / "renamed_a")
    shutil.copytree(tmp_path / "b", moved / "y")
    second = scan(moved, decode_check=False)
    by_digest = {it.digest: it.split for it in first.items}
    assert all(by_digest[it.digest] == it.split for it in second.items)


def test_assign_splits_rule():
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    splits, note = assign_splits(digests, 10, 20)
    assert note is None
    for d, s in zip(digests, splits, strict=True):
        v = split_value(d)
        assert s == ("validation" if v < 0.1 else "test" if v < 0.3 else "train")
    share = {s: splits.count(s) / 2000 for s in SPLITS}
    assert abs(share["validation"] - 0.1) < 0.03 and abs(share["test"] - 0.2) < 0.03
    # Every subset keeps the splits of the whole (no small-label adjustment at this size).
    sub, note = assign_splits(digests[::7], 10, 20)
    assert note is None and sub == splits[::7]
    with pytest.raises(ValueError):
        assign_splits(digests, 50, 50)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 8])
def test_small_labels_get_validation_and_test(n):
    for start in range(0, 200, 10):  # many different label contents
        digests = [hashlib.sha256(f"{start}-{i}".encode()).hexdigest() for i in range(n)]
        splits, note = assign_splits(digests)
        assert all(splits.count(s) >= 1 for s in SPLITS), splits
        assert splits == assign_splits(list(reversed(digests)))[0][::-1]  # order-free
        natural = ["validation" if v < 0.1 else "test" if v < 0.2 else "train"
                   for v in map(split_value, digests)]  # fmt: skip
        changed = sum(a != b for a, b in zip(splits, natural, strict=True))
        assert (note is None) == (changed == 0)
        if note:
            assert "so that no split is empty" in note
            assert note.count("moved 1 image") == changed


def test_two_images_one_train_one_validation(tmp_path):
    splits, _ = assign_splits(["a" * 64, "b" * 64])
    assert sorted(splits) == ["train", "validation"]
    make_images(tmp_path / "few", [1, 2])
    make_images(tmp_path / "many", range(10, 30))
    result = scan(tmp_path)
    assert result.counts()["few"] == {"train": 1, "validation": 1, "test": 0}
    assert any(n.startswith("label 'few': 2 images") for n in result.notes)


def test_small_label_in_scan_has_every_split_and_a_note(tmp_path):
    make_images(tmp_path / "small", [5, 6, 7])
    make_images(tmp_path / "big", range(10, 40))
    result = scan(tmp_path)
    assert result.counts()["small"] == {"train": 1, "validation": 1, "test": 1}
    assert all(result.counts()["big"][s] >= 1 for s in SPLITS)
    assert any(n.startswith("label 'small': 3 images (1 train, 1 validation, 1 test)")
               for n in result.notes)  # fmt: skip


def test_duplicates_counted_once_and_conflicts_left_out(tmp_path):
    a = make_images(tmp_path / "a", range(0, 10))
    b = make_images(tmp_path / "b", range(100, 110))
    dup = tmp_path / "a" / "sub" / "copy of img0000.jpg"
    dup.parent.mkdir()
    shutil.copy(a[0], dup)
    clash = tmp_path / "b" / "wrong_folder.jpg"
    shutil.copy(a[1], clash)
    result = scan(tmp_path)
    paths = {it.path for it in result.items}
    assert result.duplicates == [(a[0], dup)]
    assert a[0] in paths and dup not in paths
    assert len(result.conflicts) == 1
    digest, cpaths, clabels = result.conflicts[0]
    assert digest == hashlib.sha256(a[1].read_bytes()).hexdigest()
    assert cpaths == [a[1], clash] and clabels == ["a", "b"]
    assert a[1] not in paths and clash not in paths
    reasons = {s.path: s.reason for s in result.skipped}
    assert "also under label 'b'" in reasons[a[1]] and "also under label 'a'" in reasons[clash]
    assert len(paths) == 9 + 10
    assert b[0] in paths


def test_hidden_links_case_and_exclude(tmp_path):
    src = tmp_path / "src"
    imgs = make_images(src, range(0, 4))
    photo(50).save(src / "UPPER.JPG")
    photo(51).save(src / "no_extension", "PNG")
    (src / "notes.txt").write_text("holiday photos")
    photo(52).save(src / ".hidden.jpg")
    make_images(src / ".thumbnails", [53])
    photo(54).save(src / "Thumbs.db", "JPEG")
    (src / "link.jpg").symlink_to(imgs[0])
    os.link(imgs[1], src / "hardlink.jpg")
    make_images(src / "sub", [57])
    make_images(src / "out", [55, 56])  # an output folder inside the input folder
    (src / "outer_link").symlink_to(src / "out", target_is_directory=True)

    found, others = walk_files(src, exclude=src / "out")
    assert found == sorted(found)
    names = [p.name for p in found]
    assert "UPPER.JPG" in names and "no_extension" in names
    assert ".hidden.jpg" not in names and "img0053.jpg" not in names and "Thumbs.db" not in names
    assert "img0055.jpg" not in names  # neither directly nor through the link to out/
    # link.jpg and img0000.jpg are one file, as are hardlink.jpg and img0001.jpg: listed once
    assert sum(n in ("link.jpg", "img0000.jpg") for n in names) == 1
    assert sum(n in ("hardlink.jpg", "img0001.jpg") for n in names) == 1
    assert "img0057.jpg" in names  # nested folders are scanned
    assert len(names) == 7
    assert [p.name for p in others] == ["notes.txt"]
    assert list_image_files(src, exclude=src / "out") == found
    flat = list_image_files(src, recursive=False)
    assert len(flat) == 6 and all(p.parent == src for p in flat)
    assert {p.name for p in list_image_files(src)} >= {"img0055.jpg"}


def test_symlinked_file_in_label_counted_once(tmp_path):
    a = make_images(tmp_path / "a", range(0, 5))
    make_images(tmp_path / "b", range(10, 15))
    (tmp_path / "a" / "alias.jpg").symlink_to(a[2])
    (tmp_path / ".git").mkdir()
    photo(99).save(tmp_path / ".git" / "x.jpg")
    photo(98).save(tmp_path / "loose.jpg")
    result = scan(tmp_path)
    assert result.labels == ["a", "b"]
    assert len(result.items) == 10 and not result.duplicates and not result.skipped
    assert any("ignored 1 file directly in" in n for n in result.notes)


def test_label_errors_name_the_folder_and_the_fix(tmp_path):
    make_images(tmp_path / "only", range(0, 5))
    with pytest.raises(DatasetError, match=r"found 1 label folder in .*need at least 2"):
        scan(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        scan(tmp_path / "nope")
    make_images(tmp_path / "lonely", [10])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        scan(tmp_path)
    msg = str(e.value)
    assert "label 'empty' has 0" in msg and "label 'lonely' has 1" in msg
    assert str(tmp_path / "lonely") in msg and "Add images" in msg
    with pytest.raises(DatasetError, match="percentages"):
        scan(tmp_path, validation_pct=60, test_pct=50)


def test_every_kind_of_bad_input_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 2_000_000)
    good = make_images(tmp_path / "good", range(0, 6))
    bad = tmp_path / "bad"
    make_images(bad, range(10, 16))
    # Unusual but valid images: all kept.
    photo(20).convert("CMYK").save(bad / "cmyk.jpg")
    rgba = photo(21).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(bad / "rgba.png")
    photo(22).save(bad / "gif_named.jpg", "GIF")
    # Bad files, each with the reason it must get.
    expected = {}
    (bad / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "zero-byte file"
    (bad / "text.jpg").write_text("not a photo")
    expected["text.jpg"] = "not an image (looks like text)"
    (bad / "readme.txt").write_text("read me")
    expected["readme.txt"] = "not an image (looks like text)"
    (bad / "page.png").write_text("<html><body>Not found</body></html>")
    expected["page.png"] = "web page"
    whole = (bad / "img0010.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    expected["truncated.jpg"] = "truncated or corrupt JPEG"
    png = bad / "img0011.png"
    photo(11).save(png)
    (bad / "truncated.png").write_bytes(png.read_bytes()[:200])
    png.unlink()
    expected["truncated.png"] = "corrupt PNG"
    Image.new("L", (3000, 1000)).save(bad / "bomb.png")
    expected["bomb.png"] = "decompression bomb: 3 MP > limit 2 MP"
    Image.new("RGB", (200, 100), "white").save(bad / "blank.jpg", quality=100)
    expected["blank.jpg"] = "blank image"
    sign = Image.new("P", (200, 200), 0)
    sign.putpalette([250, 250, 250, 200, 0, 0, 30, 30, 30])
    sign.paste(1, (20, 80, 180, 120))
    sign.paste(2, (30, 90, 170, 110))
    sign.save(bad / "not_found.gif")
    expected["not_found.gif"] = "looks like a placeholder"
    (bad / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    expected["broken.jpg"] = "broken link"
    (bad / "photo.heic").write_bytes(
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64
    )
    expected["photo.heic"] = "HEIC" if not images.HEIF_SUPPORTED else "corrupt HEIF"

    result = scan(tmp_path)
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert set(reasons) == set(expected), reasons
    for name, want in expected.items():
        assert want in reasons[name], (name, reasons[name])
    kept = {it.path.name for it in result.items if it.label == "bad"}
    assert kept == {"cmyk.jpg", "rgba.png", "gif_named.jpg"} | {
        f"img{i:04d}.jpg" for i in range(10, 16)
    }
    assert {it.path for it in result.items if it.label == "good"} == set(good)

    # Without the decode check, header-level problems are still caught.
    quick = scan(tmp_path, decode_check=False)
    quick_reasons = {s.path.name: s.reason for s in quick.skipped}
    for name in ("zero.jpg", "text.jpg", "readme.txt", "bomb.png", "broken.jpg"):
        assert quick_reasons[name] == reasons[name]


@pytest.mark.shared
def test_hymenoptera_train_scan():
    root = require_shared() / "train"
    t0 = time.perf_counter()
    result = scan(root)
    seconds = time.perf_counter() - t0
    print(f"scan of {root} with decode check: {seconds:.2f} s")
    assert result.labels == ["ants", "bees"]
    assert [s.path.name for s in result.skipped] == ["imageNotFound.gif"]
    assert result.skipped[0].reason.startswith("looks like a placeholder, not a photo (33 colours")
    assert len(result.items) == 244 and not result.conflicts and not result.duplicates
    for label in result.labels:
        assert all(result.counts()[label][s] >= 5 for s in SPLITS)
    assert seconds < 20  # a few seconds on a 2-core laptop


@pytest.mark.shared
def test_hymenoptera_split_stable_when_growing(tmp_path):
    """Half of hymenoptera/train (as links), then all of it: the first half keeps its splits."""
    src = require_shared() / "train"
    for label in ("ants", "bees"):
        (tmp_path / label).mkdir()
        for i, p in enumerate(sorted((src / label).iterdir())):
            if i % 2 == 0:
                (tmp_path / label / p.name).symlink_to(p)
    half = splits_by_path(scan(tmp_path, decode_check=False))
    for label in ("ants", "bees"):
        for p in sorted((src / label).iterdir()):
            if not (tmp_path / label / p.name).exists():
                (tmp_path / label / p.name).symlink_to(p)
    full = splits_by_path(scan(tmp_path, decode_check=False))
    assert len(full) > len(half) > 100
    assert all(full[p] == s for p, s in half.items())
