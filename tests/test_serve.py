"""``tfguess serve``: a real uvicorn process on a loopback port, real images, a headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ARTIFACTS, REPO, TEST_DATA

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
QUEUE = 4          # the served queue is tiny so that a flood of requests fills it
UPLOAD_MB = 1
PLANTED = ["face_001.png", "face_002.png", "face_003.png"]  # faces put in not_face/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def review_tf(demo_trained, tmp_path_factory) -> Path:
    """A copy of the trained demo TF_FILES with three faces filed under not_face, re-trained
    (features cached) and evaluated, so the report has suspected label errors."""
    from tfguess.config import TrainConfig
    from tfguess.report import write_report
    from tfguess.train import train

    tf = tmp_path_factory.mktemp("serve") / "tf_files"
    shutil.copytree(demo_trained, tf)
    for name in PLANTED:
        shutil.move(tf / "data" / "face" / name, tf / "data" / "not_face" / name)
    summary = json.loads((tf / "run_summary.json").read_text())
    config = TrainConfig.from_dict({**summary["config"], "report": True})
    train(tf, config, progress=False, log=lambda *_: None)
    write_report(tf, log=lambda *_: None)
    return tf


class Server:
    def __init__(self, tf_files: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.log = open(tf_files.parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfguess", "-q", "serve", str(tf_files), "--port", str(self.port),
             *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not answer in 180 s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(review_tf):
    srv = Server(review_tf, "--queue-size", str(QUEUE), "--max-upload-mb", str(UPLOAD_MB))
    yield srv
    srv.stop()


def post_images(url: str, paths: list[Path], **params) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    return httpx.post(url + "/api/predict", files=files, params=params, timeout=60)


def post_bytes(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(url + "/api/predict", files=[("files", (name, data, "application/octet-stream"))],
                      timeout=60)


# ---------------------------------------------------------------- API


def test_predict_matches_the_python_api(server, review_tf):
    """Every held-out image: the same labels and scores as ``Predictor.predict`` (guess --json)."""
    from tfguess.predict import Predictor

    images = sorted(TEST_DATA.glob("*.jpg"))
    expected = {p.path.name: p.top for p in Predictor.load(review_tf).predict(images)}
    got = []
    for i in range(0, len(images), QUEUE):
        r = post_images(server.url, images[i:i + QUEUE])
        assert r.status_code == 200, r.text
        got += r.json()
    assert [g["path"] for g in got] == [p.name for p in images]
    for g in got:
        assert g["error"] is None
        want = expected[g["path"]]
        assert [p["label"] for p in g["predictions"]] == [lb for lb, _ in want]
        for p, (_, score) in zip(g["predictions"], want):
            assert p["score"] == pytest.approx(score, abs=1e-5)
        scores = [p["score"] for p in g["predictions"]]
        assert scores == sorted(scores, reverse=True)
    right = sum(g["predictions"][0]["label"] == g["path"].rsplit("_", 1)[0] for g in got)
    assert right >= len(got) - 1, got


def test_top_k_and_one_bad_file_among_good_ones(server):
    r = httpx.post(server.url + "/api/predict", params={"top_k": 1}, timeout=60, files=[
        ("files", ("face_090.jpg", (TEST_DATA / "face_090.jpg").read_bytes(), "image/jpeg")),
        ("files", ("notes.txt", b"just some text\n", "text/plain")),
    ])
    assert r.status_code == 200
    good, bad = r.json()
    assert [p["label"] for p in good["predictions"]] == ["face"]
    assert bad == {"path": "notes.txt", "error": "not an image (looks like text)", "predictions": []}


def test_model_card_and_health(server, review_tf):
    card = httpx.get(server.url + "/api/model").json()
    summary = json.loads((review_tf / "run_summary.json").read_text())
    assert card["labels"] == summary["labels"] == ["face", "not_face"]
    assert card["backbone"]["name"] == "efficientnet_lite0"
    assert card["test_accuracy"] == summary["metrics"]["test"]["accuracy"]
    assert card["config"]["epochs"] == summary["config"]["epochs"]
    assert card["report"] and card["review"] and card["date"]
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    report = httpx.get(server.url + "/report/")
    assert report.status_code == 200 and "Evaluation report" in report.text


def test_docs_work_offline(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    assert httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(server.url + "/docs-assets/swagger-ui.css").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(spec["paths"])


def test_other_host_names_are_refused(server):
    """Bound to 127.0.0.1, the server answers only to its loopback names (DNS rebinding)."""
    r = httpx.get(server.url + "/api/model", headers={"Host": "attacker.example"})
    assert r.status_code == 400


# ---------------------------------------------------------------- limits


def test_413_upload_too_large(server):
    data = os.urandom(int(1.5 * UPLOAD_MB * 2**20))
    r = post_bytes(server.url, "big.jpg", data)
    assert r.status_code == 413
    assert "larger than 1 MB" in r.json()["detail"]


def test_413_too_many_files(server):
    r = post_images(server.url, [TEST_DATA / "face_090.jpg"] * (QUEUE + 1))
    assert r.status_code == 413
    assert f"at most {QUEUE}" in r.json()["detail"]


def test_415_not_an_image(server):
    r = post_bytes(server.url, "page.jpg", b"<!DOCTYPE html><html><body>404</body></html>")
    assert r.status_code == 415
    body = r.json()
    assert body["results"][0]["error"] == "not an image (looks like a web page saved instead of the image)"
    assert body["detail"].startswith("page.jpg: not an image")


def _png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 300-byte PNG that announces 400 megapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_422_decompression_bomb(server):
    r = post_bytes(server.url, "bomb.png", _png_bomb())
    assert r.status_code == 422
    assert "decompression bomb" in r.json()["results"][0]["error"]


def test_422_truncated_image(server):
    data = (TEST_DATA / "face_091.jpg").read_bytes()
    r = post_bytes(server.url, "cut.jpg", data[: len(data) // 3])
    assert r.status_code == 422
    assert "corrupt JPEG" in r.json()["results"][0]["error"]


def test_503_when_the_queue_is_full_then_recovers(server):
    image = (TEST_DATA / "not_face_090.jpg").read_bytes()
    clients = 48
    barrier = threading.Barrier(clients)

    def one(client: httpx.Client) -> int:
        barrier.wait()
        r = client.post(server.url + "/api/predict", files=[("files", ("x.jpg", image, "image/jpeg"))])
        if r.status_code == 503:
            assert r.headers.get("retry-after") == "1"
            assert "busy" in r.json()["detail"]
        return r.status_code

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(lambda _: one(client), range(clients)))
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
    assert httpx.get(server.url + "/healthz").json()["queued"] == 0  # every place given back
    assert post_images(server.url, [TEST_DATA / "face_090.jpg"]).status_code == 200


# ---------------------------------------------------------------- review API


def _token(server) -> str:
    html = httpx.get(server.url + "/review").text
    return html.split('name="tfguess-token" content="', 1)[1].split('"', 1)[0]


def test_review_refuses_posts_without_the_page_token(server, review_tf):
    path = f"data/not_face/{PLANTED[0]}"
    body = {"path": path, "label": "face"}
    assert httpx.post(server.url + "/api/review/move", json=body).status_code == 403
    wrong = httpx.post(server.url + "/api/review/move", json=body, headers={"X-Tfguess-Token": "x" * 43})
    assert wrong.status_code == 403
    cross = httpx.post(server.url + "/api/review/move", json=body,
                       headers={"X-Tfguess-Token": _token(server), "Origin": "https://attacker.example"})
    assert cross.status_code == 403
    escape = httpx.post(server.url + "/api/review/move", json={"path": "../../../etc/hostname", "label": "face"},
                        headers={"X-Tfguess-Token": _token(server)})
    assert escape.status_code == 409 and "not an image of the data set" in escape.json()["detail"]
    assert (review_tf / path).is_file() and not (review_tf / "relabel-journal.csv").exists()


def test_take_out_and_undo_through_the_api(server, review_tf):
    headers = {"X-Tfguess-Token": _token(server)}
    src = review_tf / "data" / "not_face" / PLANTED[1]
    data = src.read_bytes()
    # a file of the same name already waits in removed/not_face/: it is not overwritten
    (review_tf / "removed" / "not_face").mkdir(parents=True)
    (review_tf / "removed" / "not_face" / PLANTED[1]).write_bytes(b"older")
    r = httpx.post(server.url + "/api/review/move", json={"path": f"data/not_face/{PLANTED[1]}"}, headers=headers)
    assert r.status_code == 200, r.text
    change = r.json()
    stem, ext = os.path.splitext(PLANTED[1])
    moved = review_tf / "removed" / "not_face" / f"{stem}-1{ext}"
    assert change["action"] == "remove" and change["destination"] == moved.relative_to(review_tf).as_posix()
    assert not src.exists() and moved.read_bytes() == data
    assert (review_tf / "removed" / "not_face" / PLANTED[1]).read_bytes() == b"older"
    r = httpx.post(server.url + "/api/review/undo", json={"id": change["id"]}, headers=headers)
    assert r.status_code == 200, r.text
    assert src.read_bytes() == data and not moved.exists()
    again = httpx.post(server.url + "/api/review/undo", json={"id": change["id"]}, headers=headers)
    assert again.status_code == 409
    with open(review_tf / "relabel-journal.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["action"] for r in rows][-2:] == ["remove", "undo"]
    shutil.rmtree(review_tf / "removed")


# ---------------------------------------------------------------- the pages in Chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are missing: CI must run the browser tests")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


@pytest.mark.slow
def test_page_classifies_an_uploaded_photo(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[data-fact='labels']").text)
    assert browser.find_element(By.CSS_SELECTOR, "[data-fact='labels']").text == "face, not_face"
    pick = browser.find_element(By.ID, "pick")
    assert pick.get_attribute("accept") == "image/*" and pick.get_attribute("multiple") is not None
    browser.execute_script("arguments[0].hidden = false", pick)
    pick.send_keys("\n".join(str(TEST_DATA / n) for n in ("face_090.jpg", "not_face_091.jpg")))
    browser.execute_script("arguments[0].hidden = true", pick)
    tiles = _wait(browser, lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, ".result[data-label]")]
                  if len(d.find_elements(By.CSS_SELECTOR, ".result[data-label]")) == 2 else False)
    labels = {t.find_element(By.CSS_SELECTOR, ".name").text: t.get_attribute("data-label") for t in tiles}
    assert labels == {"face_090.jpg": "face", "not_face_091.jpg": "not_face"}
    assert len(browser.find_elements(By.CSS_SELECTOR, ".result .bar")) == 4
    assert _screenshot(browser, "serve-page.png").stat().st_size > 10_000
    browser.set_window_size(390, 844)  # a phone
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
    _screenshot(browser, "serve-page-phone.png")
    browser.set_window_size(1200, 900)


@pytest.mark.slow
def test_review_page_moves_and_undoes(server, browser, review_tf):
    from selenium.webdriver.common.by import By

    items = httpx.get(server.url + "/api/review").json()["items"]
    planted = [i for i in items if i["kind"] == "suspect" and i["name"] in PLANTED and i["where"] == "data"]
    assert planted, f"the planted label errors are not among the suspects: {items}"
    item = planted[0]
    src, dst = review_tf / item["path"], review_tf / "data" / "face" / item["name"]
    data = src.read_bytes()
    assert item["label"] == "not_face" and item["suggested"] == "face" and not dst.exists()

    browser.get(server.url + "/review")
    selector = f"article[data-path='{item['path']}']"
    tile = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, selector))
    _screenshot(browser, "serve-review.png")
    tile.find_element(By.CSS_SELECTOR, "button.move").click()  # the suggested label is preselected
    moved = f"article[data-path='data/face/{item['name']}'] button.undo"
    undo = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, moved))[0]
    assert dst.read_bytes() == data and not src.exists()
    assert browser.find_element(By.ID, "banner").is_displayed()
    _screenshot(browser, "serve-review-moved.png")
    undo.click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, selector + " button.move"))
    assert src.read_bytes() == data and not dst.exists()
    with open(review_tf / "relabel-journal.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["action"], r["source"], r["destination"]) for r in rows[-2:]] == [
        ("move", item["path"], f"data/face/{item['name']}"),
        ("undo", f"data/face/{item['name']}", item["path"]),
    ]


@pytest.mark.slow
def test_retrain_after_a_fix_reloads_the_model(server, review_tf):
    headers = {"X-Tfguess-Token": _token(server)}
    before = httpx.get(server.url + "/api/model").json()
    name = PLANTED[2]
    r = httpx.post(server.url + "/api/review/move", json={"path": f"data/not_face/{name}", "label": "face"},
                   headers=headers)
    assert r.status_code == 200, r.text
    assert httpx.post(server.url + "/api/review/retrain", headers=headers).json()["state"] == "running"
    deadline = time.monotonic() + 900  # seconds idle; generous for a busy machine
    while (state := httpx.get(server.url + "/api/review/retrain").json())["state"] == "running":
        assert time.monotonic() < deadline, "re-training did not finish in 900 s"
        time.sleep(1)
    assert state["state"] == "done", state
    assert 0 <= state["accuracy"] <= 1 and state["n_test"] > 0
    after = httpx.get(server.url + "/api/model").json()
    assert after["date"] >= before["date"] and after["test_accuracy"] == state["accuracy"]
    summary = json.loads((review_tf / "run_summary.json").read_text())
    trained_on = {Path(p).name: label for items in summary["splits"].values() for p, label, _ in items}
    assert trained_on[name] == "face"  # the fixed label was used
    # the server answers with the new model
    assert post_images(server.url, [TEST_DATA / "face_090.jpg"]).status_code == 200


# ---------------------------------------------------------------- the data set editor, in-process


def test_editor_never_overwrites_and_undo_finds_a_free_name(tmp_path):
    from tfguess.relabel import DataSetEditor, RelabelError

    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
    (data / "a" / "x.jpg").write_bytes(b"first")
    (data / "b" / "x.jpg").write_bytes(b"second")
    ed = DataSetEditor(tmp_path, data, ["a", "b"])
    change = ed.move(data / "a" / "x.jpg", "b")
    assert change.destination == "data/b/x-1.jpg"
    assert (data / "b" / "x.jpg").read_bytes() == b"second" and (data / "b" / "x-1.jpg").read_bytes() == b"first"
    (data / "a" / "x.jpg").write_bytes(b"newcomer")  # the old name is taken again
    back = ed.undo(change.id)
    assert back.destination == "data/a/x-1.jpg" and (data / "a" / "x.jpg").read_bytes() == b"newcomer"
    assert ed.current_path(data / "a" / "x.jpg") == data / "a" / "x-1.jpg"
    with pytest.raises(RelabelError, match="unknown label"):
        ed.move(data / "a" / "x.jpg", "../etc")
    with pytest.raises(RelabelError, match="not an image of the data set"):
        ed.remove(tmp_path / "elsewhere.jpg")
    assert sorted(p.name for p in data.rglob("*") if p.is_file()) == ["x-1.jpg", "x.jpg", "x.jpg"]


def test_error_status_and_exposure_warning():
    from tfguess.serve import error_status, exposure_warning

    assert error_status("not an image (looks like text)") == 415
    assert error_status("unsupported format HEIC: pip install pillow-heif") == 415
    assert error_status("decompression bomb: more than 89 MP") == 422
    assert error_status("truncated or corrupt JPEG: image file is truncated") == 422
    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert "every network interface" in exposure_warning("0.0.0.0")


def test_cli_serve_help_names_the_host_risk():
    out = subprocess.run([sys.executable, "-m", "tfguess", "serve", "--help"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True).stdout
    assert "0.0.0.0 exposes it to the network" in " ".join(out.split())
