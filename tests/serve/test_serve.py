"""``tfguess serve``: a real uvicorn process on a loopback port, real images (the pages in a
headless Chromium: test_browser.py)."""

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
from conftest import REPO, TEST_DATA

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

QUEUE = 4          # the served queue is tiny so that a flood of requests fills it
UPLOAD_MB = 1
PLANTED = ["face_001.png", "face_002.png", "face_003.png"]  # faces put in not_face/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_review_tf(demo_trained: Path, tf: Path) -> Path:
    """A copy of the trained demo TF_FILES at ``tf`` with three faces filed under not_face,
    re-trained (features cached) and evaluated, so the report has suspected label errors."""
    from tfguess.core.config import TrainConfig
    from tfguess.curate.report import write_report
    from tfguess.training.train import train

    shutil.copytree(demo_trained, tf)
    for name in PLANTED:
        shutil.move(tf / "data" / "face" / name, tf / "data" / "not_face" / name)
    summary = json.loads((tf / "run_summary.json").read_text())
    config = TrainConfig.from_dict({**summary["config"], "report": True})
    train(tf, config, progress=False, log=lambda *_: None)
    write_report(tf, log=lambda *_: None)
    return tf


@pytest.fixture(scope="module")
def review_tf(demo_trained, tmp_path_factory) -> Path:
    return make_review_tf(demo_trained, tmp_path_factory.mktemp("serve") / "tf_files")


class Server:
    def __init__(self, tf_files: Path, *extra: str, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        if host != "127.0.0.1":
            extra = ("--host", host, *extra)
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


@pytest.mark.slow
def test_predict_matches_the_python_api(server, review_tf):
    """Every held-out image: the same labels and scores as ``Predictor.predict`` (guess --json)."""
    from tfguess.guess.predict import Predictor

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


@pytest.mark.slow
def test_top_k_and_one_bad_file_among_good_ones(server):
    r = httpx.post(server.url + "/api/predict", params={"top_k": 1}, timeout=60, files=[
        ("files", ("face_090.jpg", (TEST_DATA / "face_090.jpg").read_bytes(), "image/jpeg")),
        ("files", ("notes.txt", b"just some text\n", "text/plain")),
    ])
    assert r.status_code == 200
    good, bad = r.json()
    assert [p["label"] for p in good["predictions"]] == ["face"]
    assert bad == {"path": "notes.txt", "error": "not an image (looks like text)", "predictions": [],
                   "model_digest": None}


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_card_of_a_trained_tf_files_served_without_an_inbox(server):
    card = httpx.get(server.url + "/api/model").json()
    assert (card["model"], card["review"], card["inbox"]) == (True, True, False)


@pytest.mark.slow
def test_explain_gives_an_occlusion_map_of_the_best_label(server):
    """"why?" on the page: each cell of a 5x5 grid covered in turn; the drops of the best label."""
    import base64
    import io

    from PIL import Image

    image = TEST_DATA / "face_090.jpg"
    r = httpx.post(server.url + "/api/explain", params={"grid": 5}, timeout=60,
                   files=[("files", (image.name, image.read_bytes(), "image/jpeg"))])
    assert r.status_code == 200, r.text
    body = r.json()
    best = post_images(server.url, [image]).json()[0]["predictions"][0]
    assert body["label"] == best["label"] and body["score"] == pytest.approx(best["score"], abs=1e-5)
    assert len(body["grid"]) == 5 and {len(row) for row in body["grid"]} == {5}
    assert all(-1 <= v <= 1 for row in body["grid"] for v in row)
    assert 0 < body["seconds"] < 30 and body["model_digest"].startswith("sha256:")
    png = base64.b64decode(body["image"].removeprefix("data:image/png;base64,"))
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] > 0
    bad = httpx.post(server.url + "/api/explain", timeout=60,
                     files=[("files", ("notes.txt", b"just text", "text/plain"))])
    assert bad.status_code == 415 and "not an image" in bad.json()["detail"]
    two = httpx.post(server.url + "/api/explain", timeout=60,
                     files=[("files", (image.name, image.read_bytes(), "image/jpeg"))] * 2)
    assert two.status_code == 422


@pytest.mark.slow
def test_docs_work_offline(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    assert httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(server.url + "/docs-assets/swagger-ui.css").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(spec["paths"])


@pytest.mark.slow
def test_other_host_names_are_refused(server):
    """Bound to 127.0.0.1, the server answers only to its loopback names (DNS rebinding)."""
    r = httpx.get(server.url + "/api/model", headers={"Host": "attacker.example"})
    assert r.status_code == 400


# ---------------------------------------------------------------- limits


@pytest.mark.slow
def test_413_upload_too_large(server):
    data = os.urandom(int(1.5 * UPLOAD_MB * 2**20))
    r = post_bytes(server.url, "big.jpg", data)
    assert r.status_code == 413
    assert "larger than 1 MB" in r.json()["detail"]
    assert "--" not in r.json()["detail"]  # a web user is not told about a command-line flag


@pytest.mark.slow
def test_413_too_many_files(server):
    r = post_images(server.url, [TEST_DATA / "face_090.jpg"] * (QUEUE + 1))
    assert r.status_code == 413
    assert f"at most {QUEUE}" in r.json()["detail"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_422_decompression_bomb(server):
    r = post_bytes(server.url, "bomb.png", _png_bomb())
    assert r.status_code == 422
    assert "decompression bomb" in r.json()["results"][0]["error"]


@pytest.mark.slow
def test_422_truncated_image(server):
    data = (TEST_DATA / "face_091.jpg").read_bytes()
    r = post_bytes(server.url, "cut.jpg", data[: len(data) // 3])
    assert r.status_code == 422
    assert "corrupt JPEG" in r.json()["results"][0]["error"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- re-training (the pages in Chromium: test_browser.py)


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
    from tfguess.curate.relabel import DataSetEditor, RelabelError

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


# ---------------------------------------------------------------- what people ask of a served model


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.mark.slow
def test_review_thumbnail_is_an_image(server):
    """Every thumbnail of the review page answered 500 (an import left by the report split)."""
    from PIL import Image

    items = httpx.get(server.url + "/api/review").json()["items"]
    assert items
    for item in items[:3]:
        r = httpx.get(server.url + "/api/review/image", params={"path": item["path"]})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/jpeg"
        with Image.open(__import__("io").BytesIO(r.content)) as im:
            assert 0 < max(im.size) <= 320
    assert httpx.get(server.url + "/api/review/image", params={"path": "../run_summary.json"}).status_code == 404


@pytest.mark.slow
def test_openapi_is_3_0_with_a_file_field(server):
    """The bundled Swagger UI renders OpenAPI 3.0.x, not the 3.1 FastAPI writes by default."""
    spec = httpx.get(server.url + "/openapi.json").json()
    assert spec["openapi"] == "3.0.3"
    text = json.dumps(spec)
    assert '"type": "null"' not in text and "contentMediaType" not in text
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"] == {"type": "array", "description": "image files (the field repeated)",
                                           "items": {"type": "string", "format": "binary"}}
    params = {p["name"]: p for p in spec["paths"]["/api/predict"]["post"]["parameters"]}
    assert params["top_k"]["schema"]["minimum"] == 0


@pytest.mark.slow
def test_413_more_than_1000_files(server):
    """Starlette's own cap (1000 files) answered 400; every too-many-files request is a 413."""
    files = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(1001)]
    r = httpx.post(server.url + "/api/predict", files=files, timeout=60)
    assert r.status_code == 413, r.text
    assert f"at most {QUEUE}" in r.json()["detail"]


@pytest.mark.slow
def test_every_prediction_names_the_weights_and_the_limits_are_published(server, review_tf):
    import hashlib

    digest = "sha256:" + hashlib.sha256((review_tf / "model.keras").read_bytes()).hexdigest()
    card = httpx.get(server.url + "/api/model").json()
    assert card["digest"] == digest
    assert card["limits"] == {"max_upload_bytes": UPLOAD_MB * 2**20, "max_files": QUEUE, "timeout_s": 60.0}
    assert httpx.get(server.url + "/healthz").json()["limits"] == card["limits"]
    r = post_images(server.url, [TEST_DATA / "face_090.jpg", TEST_DATA / "not_face_090.jpg"])
    assert r.status_code == 200 and r.headers["x-model-digest"] == digest
    assert [e["model_digest"] for e in r.json()] == [digest, digest]
    bad = post_bytes(server.url, "notes.txt", b"text")
    assert bad.status_code == 415 and bad.headers["x-model-digest"] == digest


@pytest.mark.slow
def test_report_links_work_over_http(server, review_tf):
    """The report links its images as file:// URLs; served over HTTP they must open."""
    import re

    page = httpx.get(server.url + "/report/").text
    assert "file://" not in page
    links = re.findall(r'href="(/api/review/file\?path=[^"]+)"', page)
    assert links, "the report links no image"
    from urllib.parse import parse_qs, urlsplit

    link = links[0].replace("&amp;", "&")
    r = httpx.get(server.url + link)
    on_disk = Path(parse_qs(urlsplit(link).query)["path"][0])
    assert r.status_code == 200 and r.content == on_disk.read_bytes()
    assert httpx.get(server.url + "/api/review/file", params={"path": str(review_tf / "run_summary.json")}).status_code == 404


@pytest.mark.slow
def test_metrics_count_the_requests_sent(server):
    before = httpx.get(server.url + "/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    sent = {"ok": 0, "bad": 0}
    with ThreadPoolExecutor(4) as pool:
        def one(i):
            if i % 5 == 4:
                return post_bytes(server.url, "x.txt", b"text").status_code
            return post_images(server.url, [TEST_DATA / "face_090.jpg"]).status_code
        codes = list(pool.map(one, range(20)))
    sent["ok"], sent["bad"] = codes.count(200), codes.count(415)
    assert sent["ok"] + sent["bad"] == 20, codes
    after = httpx.get(server.url + "/metrics").text
    b = before.text
    route = {"route": "/api/predict", "method": "POST"}
    assert _metric(after, "tfguess_http_requests_total", status="200", **route) - \
        _metric(b, "tfguess_http_requests_total", status="200", **route) == sent["ok"]
    assert _metric(after, "tfguess_http_requests_total", status="415", **route) - \
        _metric(b, "tfguess_http_requests_total", status="415", **route) == sent["bad"]
    assert _metric(after, "tfguess_http_request_duration_seconds_count", **route) - \
        _metric(b, "tfguess_http_request_duration_seconds_count", **route) == 20
    assert _metric(after, "tfguess_images_classified_total") - _metric(b, "tfguess_images_classified_total") == sent["ok"]
    assert _metric(after, "tfguess_batch_size_sum") - _metric(b, "tfguess_batch_size_sum") == sent["ok"]
    assert _metric(after, "tfguess_queue_depth") == 0
    print(f"\n/metrics: {sent['ok']} + {sent['bad']} predict requests sent, counted "
          f"{_metric(after, 'tfguess_http_requests_total', **route) - _metric(b, 'tfguess_http_requests_total', **route):g}")


@pytest.fixture(scope="module")
def keyed_server(review_tf):
    """On IPv6 loopback (its Host header is '[::1]:PORT'), with an API key, a CORS origin and
    the access log."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    srv = Server(review_tf, "--api-key", "k3y-for-tests", "--cors-origin", "https://app.example",
                 "--access-log", host="::1")
    yield srv
    srv.stop()


@pytest.mark.slow
def test_ipv6_loopback_api_key_cors_and_access_log(keyed_server):
    url = keyed_server.url
    assert httpx.get(url + "/healthz").status_code == 200       # liveness stays open
    image = [TEST_DATA / "face_090.jpg"]
    for path in ("/api/model", "/metrics", "/openapi.json", "/api/review"):
        r = httpx.get(url + path)
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert post_images(url, image).status_code == 401
    assert httpx.get(url + "/api/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    key = {"Authorization": "Bearer k3y-for-tests"}
    assert httpx.get(url + "/api/model", headers=key).status_code == 200
    assert httpx.get(url + "/api/model", headers={"X-API-Key": "k3y-for-tests"}).status_code == 200
    files = [("files", ("f.jpg", image[0].read_bytes(), "image/jpeg"))]
    assert httpx.post(url + "/api/predict", files=files, headers=key, timeout=60).status_code == 200
    # a person: the page sends to the login form, the key sets a cookie, the page then opens
    page = httpx.get(url + "/review", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Freview"
    with httpx.Client(base_url=url) as browser:
        wrong = browser.post("/login", data={"key": "nope", "next": "/review"})
        assert wrong.status_code == 401 and "not the API key of this server" in wrong.text
        ok = browser.post("/login", data={"key": "k3y-for-tests", "next": "/review"})
        assert ok.status_code == 303 and ok.headers["location"] == "/review"
        assert "k3y-for-tests" not in ok.headers["set-cookie"]
        assert browser.get("/review").status_code == 200
        assert browser.get("/api/review").status_code == 200
    # CORS: the listed origin may call the API from its pages, another may not
    pre = httpx.options(url + "/api/predict", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.get(url + "/api/model", headers={**key, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    log = keyed_server.output()
    assert '"GET /api/model" 401' in log and '"GET /api/model" 200' in log
    assert "k3y-for-tests" not in log


# ---------------------------------------------------------------- fast: no model, no TensorFlow


def _dummy_app(scope_seen: list):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        scope_seen.append(scope)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"got %d bytes" % len(body)})
    return app


def test_host_header_of_an_ipv6_loopback_is_accepted():
    from starlette.testclient import TestClient

    from tfguess.serve import ServeLimits, host_name
    from tfguess.serve.app import _guard

    assert host_name("[::1]:8080") == "::1" and host_name("[::1]") == "::1"
    assert host_name("127.0.0.1:80") == "127.0.0.1" and host_name("localhost") == "localhost"
    app = _guard(_dummy_app([]), ServeLimits(), loopback_only=True)
    assert TestClient(app, base_url="http://[::1]:8080").get("/").status_code == 200
    assert TestClient(app, base_url="http://localhost:8080").get("/").status_code == 200
    assert TestClient(app, base_url="http://attacker.example").get("/").status_code == 400


def test_a_trickling_upload_is_cut_off_by_the_request_clock():
    """--timeout is per request: one byte every 0.4 s must not keep a request alive."""
    uvicorn = pytest.importorskip("uvicorn")
    from tfguess.serve import ServeLimits
    from tfguess.serve.app import _guard

    port = free_port()
    app = _guard(_dummy_app([]), ServeLimits(timeout_s=1.5), loopback_only=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not srv.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
            t0 = time.monotonic()
            sock.settimeout(0.4)
            answer = b""
            while time.monotonic() - t0 < 8 and not answer:
                try:
                    sock.sendall(b"x")
                    answer = sock.recv(200)
                except TimeoutError:
                    continue
                except OSError:
                    break
            took = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert took < 3, f"cut off after {took:.1f} s"
    finally:
        srv.should_exit = True
        thread.join(10)


def test_api_key_middleware():
    from starlette.testclient import TestClient

    from tfguess.serve.auth import COOKIE, require_key, session_value

    app = TestClient(require_key(_dummy_app([]), "s3cret"), base_url="http://127.0.0.1:8080")
    assert app.get("/api/model").status_code == 401
    assert app.post("/api/predict", content=b"x").status_code == 401
    assert app.get("/api/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert app.get("/api/model", headers={"Authorization": "Bearer s3cre"}).status_code == 401
    assert app.get("/api/model", headers={"X-API-Key": "s3cret"}).status_code == 200
    app.cookies.set(COOKIE, session_value("s3cret"))
    assert app.get("/api/model").status_code == 200
    app.cookies.clear()
    for public in ("/healthz", "/static/app.js", "/docs-assets/swagger-ui.css", "/login", "/favicon.ico"):
        assert app.get(public).status_code == 200, public
    page = app.get("/review?x=1", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Freview%3Fx%3D1"


def test_serve_refuses_the_network_without_a_key(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("TFGUESS_API_KEY", None)
    from tfguess.serve import ServeError, check_exposure

    for host in ("192.0.2.10", "::"):
        with pytest.raises(ServeError, match=f"refusing to listen on {host} without an API key"):
            check_exposure(host, None, False)
    check_exposure("0.0.0.0", "key", False)
    check_exposure("0.0.0.0", None, True)
    check_exposure("::1", None, False)
    for host in ("0.0.0.0",):   # the command: one line, exit 2, before loading anything
        r = subprocess.run([sys.executable, "-m", "tfguess", "serve", str(tmp_path), "--host", host],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"refusing to listen on {host} without an API key" in lines[0]
        assert "--api-key KEY" in lines[0] and "TFGUESS_API_KEY" in lines[0] and "--no-auth" in lines[0]
    print("\n" + lines[0])


def test_cors_origins_are_checked():
    from tfguess.serve import ServeError, check_cors_origins

    assert check_cors_origins(["https://app.example/", "http://localhost:3000"]) == [
        "https://app.example", "http://localhost:3000"]
    for bad in ("app.example", "https://app.example/path", "ftp://x"):
        with pytest.raises(ServeError, match="invalid --cors-origin"):
            check_cors_origins([bad])


def test_openapi_3_1_constructs_become_3_0():
    from tfguess.serve.docs import openapi_3_0

    spec = {"openapi": "3.1.0", "info": {"title": "t", "version": "1", "summary": "s"}, "paths": {},
            "components": {"schemas": {"A": {"type": "object", "properties": {
                "label": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Label"},
                "ids": {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
                "file": {"type": "string", "contentMediaType": "application/octet-stream"},
                "n": {"type": "integer", "exclusiveMinimum": 0},
                "kind": {"const": "x"}}}}}}
    out = openapi_3_0(spec)
    props = out["components"]["schemas"]["A"]["properties"]
    assert out["openapi"] == "3.0.3" and "summary" not in out["info"]
    assert props["label"] == {"type": "string", "title": "Label", "nullable": True}
    assert props["ids"] == {"anyOf": [{"type": "integer"}, {"type": "string"}], "nullable": True}
    assert props["file"] == {"type": "string", "format": "binary"}
    assert props["n"] == {"type": "integer", "minimum": 0, "exclusiveMinimum": True}
    assert props["kind"] == {"enum": ["x"]}


def test_the_card_says_how_the_model_was_trained():
    """The model card's mode comes from the model's description: frozen, fine-tuned, an ensemble,
    a TF Hub module (it said "frozen backbone" of every model)."""
    from tfguess.serve.model_card import training_mode

    stock = {"weights_source": "pip package efficientnet-lite-keras"}
    tuned = {"weights_source": "pip package efficientnet-lite-keras, fine-tuned"}
    assert training_mode({"backbone": stock}) == ("transfer learning: frozen backbone, trained "
                                                  "softmax head")
    assert training_mode({"backbone": tuned}) == ("transfer learning: fine-tuned backbone (its top "
                                                  "blocks), trained softmax head")
    ensemble = {"backbone": tuned, "ensemble": {"members": [{"file": "m1", "backbone": tuned}]}}
    assert training_mode(ensemble) == ("transfer learning: 2 fine-tuned backbones, each with a "
                                       "trained softmax head, probabilities averaged")
    assert training_mode({"config": {"tfhub_module": "/m"}}) == "TF Hub module /m"
