"""The heavy stages on a Ray cluster: bottleneck extraction (``train``) and ``guess-dir``.

``--ray auto`` uses the Ray cluster this machine belongs to (``ray start``, or ``RAY_ADDRESS``)
and otherwise starts one on this machine; ``--ray ADDRESS`` joins the cluster at ``ADDRESS``
(``ray://head:10001`` or ``head:6379``). Needs the ``ray`` extra (``pip install 'tfguess[ray]'``).

How the work is split (docs/scale.md):

- The driver (the machine running ``tfguess``) scans the inputs, reads the cache and converts the
  backbone to its TFLite engine once (:attr:`features.BackboneRef.engine_file`), as the local
  path does. The engine file's bytes travel to the cluster with the job.
- Ray Data maps batches of ``(path, digest)`` rows over a pool of actors, one per CPU
  (:class:`ImageActor`). Each actor builds the same :class:`runtime.TFLiteEngine` once and
  decodes its images itself with :func:`pipeline.load_pixels` (same pixels, same failure
  reasons as the local path). Paths are local or shared-file-system paths, or URIs a pyarrow file
  system reads (``s3://``, ``gs://``, ``hdfs://``).
- Results stream back to the driver, which writes them into the same
  :class:`bottlenecks.BottleneckCache` (atomic writes) or, for ``guess-dir``, copies the files
  through :func:`predict.guess_dir` itself, so the copies, names and manifest follow the local
  rules exactly. A killed actor is restarted and its batch retried (``max_restarts``,
  ``max_task_retries``); the cache and the copies are only written from finished batches.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tfguess.core.config import GuessConfig, configure
from tfguess.core.errors import ConfigError, DatasetError
from tfguess.core.fsutil import atomic_write
from tfguess.data.pipeline import load_pixels
from tfguess.engine.bottlenecks import BottleneckCache, FeatureResult, _progress
from tfguess.engine.features import BackboneRef, convert_to_tflite
from tfguess.guess.predict import Prediction, Predictor

INSTALL_HINT = "install the ray extra: pip install 'tfguess[ray]'"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"--ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str = "auto"):
    """Join the Ray cluster (``auto``: this machine's, else a new local one). Returns ``ray``."""
    _check_reachable(address)
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=None if address == "auto" else address, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: {exc}. Start one with "
                          "`ray start --head` or pass its address (host:6379 or ray://host:10001)"
                          ) from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address (``host:port`` or ``ray://host:port``) that nothing answers at is one
    line at once: Ray itself retries a dead address for minutes before it gives up."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray says what it makes of it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: nothing answers there "
                          f"({exc.strerror or exc}). Start one with `ray start --head` or pass "
                          "its address (host:6379 or ray://host:10001)") from None


def cluster_workers(ray) -> int:
    """One actor per CPU of the cluster."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# --- paths: local, shared file systems, object storage --------------------------------------

def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def resolve_filesystem(location: str):
    """``(pyarrow FileSystem, path inside it)`` for a URI such as ``s3://bucket/photos``.

    Raises :class:`DatasetError` with the URI and the fix when it cannot be opened (unknown
    scheme, no credentials, no network).
    """
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise ConfigError(f"reading {location} needs pyarrow: {INSTALL_HINT}") from None
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise DatasetError(f"cannot open {location}: {_first_line(exc)}. Check the URI, the "
                           "credentials and that this machine reaches the storage") from None


def list_files(location: str) -> list[str]:
    """Every file under a URI folder (recursive), sorted: the inputs of a job on object storage."""
    import pyarrow.fs as pafs

    fs, root = resolve_filesystem(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except Exception as exc:  # noqa: BLE001 - network, permissions, missing bucket
        raise DatasetError(f"cannot list {location}: {_first_line(exc)}. Check the URI, the "
                           "credentials and that this machine reaches the storage") from None
    scheme = location.split("://", 1)[0]
    return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def _read_uri(uri: str, filesystems: dict) -> tuple[bytes | None, str | None]:
    """The bytes of the file at ``uri``, or the reason they cannot be read (the local path's
    words); one file system per scheme and bucket, made on first use."""
    scheme, rest = uri.split("://", 1)
    store = f"{scheme}://{rest.split('/', 1)[0]}"
    try:
        if store not in filesystems:
            filesystems[store] = resolve_filesystem(uri)[0]
        with filesystems[store].open_input_file(rest) as f:
            return f.readall(), None
    except FileNotFoundError:
        return None, "file not found (or a broken link)"
    except (DatasetError, OSError) as exc:
        return None, f"cannot read: {_first_line(exc)}"


# --- the actor --------------------------------------------------------------------------------

def _engine_on_this_node(engine: bytes) -> Path:
    """The engine file on the actor's node: written once (atomically), named by its content."""
    digest = hashlib.sha256(engine).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "tfguess-engines" / f"{digest}.tflite"
    if not path.exists() or path.stat().st_size != len(engine):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, engine)
    return path


class ImageActor:
    """One per CPU: the TFLite engine built once; a batch of paths -> features (or class
    probabilities when a head is given) and, per image, the reason it failed ("" when it did not).
    """

    def __init__(self, engine: list, size: int, resize: str,
                 head: tuple[np.ndarray, ...] | None = None) -> None:
        import ray

        from tfguess.engine.runtime import Head, TFLiteEngine

        # ``engine``: ``[ObjectRef of the file's bytes]``, owned by the driver for the whole job,
        # so a restarted actor still finds it.
        self.engine = TFLiteEngine(_engine_on_this_node(ray.get(engine[0])), threads=1)
        self.size, self.resize = size, resize
        self.head = Head(*head) if head is not None else None
        self._filesystems: dict = {}

    def _load(self, path: str) -> tuple[np.ndarray | None, str | None]:
        data = None
        if is_uri(path):
            data, error = _read_uri(path, self._filesystems)
            if error:
                return None, error
        return load_pixels(path, self.size, self.resize, data=data,
                           reject_placeholders=self.head is None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = [self._load(str(p)) for p in batch["path"]]
        good = [i for i, (pixels, _) in enumerate(loaded) if pixels is not None]
        out = None
        if good:
            out = self.engine(np.stack([loaded[i][0] for i in good]))
            if self.head is not None:
                out = self.head(out)
        width = out.shape[1] if out is not None else 1
        values = np.full((len(loaded), width), np.nan, np.float32)
        if out is not None:
            values[good] = out
        return {
            "path": batch["path"],
            "digest": batch["digest"],
            "values": values,
            "error": np.array([error or "" for _, error in loaded], dtype=object),
        }


def map_images(rows: list[tuple[str, str]], engine: bytes, size: int, resize: str, *,
               head: tuple[np.ndarray, ...] | None = None, workers: int = 0,
               batch_size: int = 32, preserve_order: bool = False,
               address: str = "auto") -> Iterator[dict[str, np.ndarray]]:
    """Run :class:`ImageActor` over ``(path, digest)`` rows on the cluster; yields result batches
    as they finish (in input order when ``preserve_order``)."""
    ray = connect(address)
    workers = workers or cluster_workers(ray)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = preserve_order
    ctx.enable_progress_bars = False
    blocks = max(1, min(len(rows), max(4 * workers, -(-len(rows) // 1024))))
    ds = ray.data.from_items([{"path": str(p), "digest": d} for p, d in rows],
                             override_num_blocks=blocks)
    engine_ref = ray.put(engine)
    # Ray Data's actor pools restart a lost actor and retry its batch without limit
    # (max_restarts=-1, max_task_retries=-1 are its defaults); tests/guess/test_distributed.py kills one.
    ds = ds.map_batches(
        ImageActor,
        fn_constructor_kwargs={"engine": [engine_ref], "size": size, "resize": resize,
                               "head": head},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    del engine_ref


def engine_bytes(ref: BackboneRef, build_model: Callable[[], object],
                 log: Callable[[str], None] = print) -> bytes:
    """The backbone's TFLite engine file (converted on this machine first when missing)."""
    path = ref.engine_file
    if not path.exists():
        log(f"Converting the backbone to TFLite once (cached in {path.parent}) ...")
        try:
            convert_to_tflite(build_model(), ref.input_size, path)
        except Exception as exc:  # noqa: BLE001 - the Ray path has no Keras fallback
            raise ConfigError(f"--ray runs the TFLite engine, but converting {ref.name} failed "
                              f"({exc.__class__.__name__}): run without --ray") from None
    return path.read_bytes()


# --- bottleneck extraction --------------------------------------------------------------------

def compute_features_ray(
    items: list[tuple[Path | str, str]],
    cache: BottleneckCache,
    ref: BackboneRef,
    build_model: Callable[[], object],
    *,
    address: str = "auto",
    workers: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int], None] | None = None,
) -> FeatureResult:
    """:func:`bottlenecks.compute_features` on the cluster: the same result and the same cache
    (features and skip reasons), so a following local run computes nothing."""
    start = time.perf_counter()
    result = FeatureResult()
    todo: list[tuple[str, str]] = []
    for path, digest in items:
        hit = cache.get(digest)
        if isinstance(hit, np.ndarray):
            result.features[digest] = hit
            result.cached += 1
        elif isinstance(hit, str):
            result.skipped[digest] = hit
            result.cached += 1
        else:
            todo.append((str(path), digest))
    if todo:
        engine = engine_bytes(ref, build_model, log)
        bar = _progress(len(todo), "bottlenecks (ray)", progress)
        for batch in map_images(todo, engine, ref.input_size, ref.resize, workers=workers,
                                batch_size=batch_size, address=address):
            for digest, values, error in zip(batch["digest"], batch["values"], batch["error"]):
                digest = str(digest)
                if error:
                    cache.put_skip(digest, str(error))
                    result.skipped[digest] = str(error)
                else:
                    cache.put(digest, values)
                    result.features[digest] = values.astype(np.float32)
            result.computed += len(batch["digest"])
            bar.update(len(batch["digest"]))
            if on_batch:
                on_batch(result.computed)
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


class RayFeatureComputer:
    """``compute_features``'s signature, computing on the cluster (for ``train --eval-dir``)."""

    def __init__(self, ref: BackboneRef, build_model: Callable[[], object], address: str,
                 workers: int = 0, log: Callable[[str], None] = print) -> None:
        self.ref, self.build_model, self.address, self.workers = ref, build_model, address, workers
        self.log = log

    def __call__(self, items, cache, make_extractor=None, size=None, resize=None, *,
                 workers: int = 0, batch_size: int = 32, progress: bool = True) -> FeatureResult:
        return compute_features_ray(items, cache, self.ref, self.build_model,
                                    address=self.address, workers=self.workers,
                                    batch_size=batch_size, progress=progress, log=self.log)


# --- guess-dir --------------------------------------------------------------------------------

class RayPredictor(Predictor):
    """A :class:`predict.Predictor` whose images are decoded and classified by the cluster's
    actors; predictions come back in input order, so :func:`predict.guess_dir` names, copies
    and records them exactly as it does locally."""

    def __init__(self, labels: list[str], ref: BackboneRef, head, engine: bytes, address: str,
                 workers: int = 0, identity: str = "") -> None:
        super().__init__(labels, ref.input_size, ref.resize, head, "tflite (ray)", identity)
        self.ref, self.head, self._engine = ref, head, engine
        self.address, self.workers = address, workers

    @classmethod
    def load_ray(cls, model: str | Path, address: str = "auto", workers: int = 0,
                 log: Callable[[str], None] = print) -> RayPredictor:
        from tfguess.engine.model import (
            backbone_names,
            ensemble_members,
            load_classifier,
            read_head,
            read_meta,
            resolve_model_path,
        )
        from tfguess.guess.predict import guessing_engine, model_identity

        path = resolve_model_path(model)
        if path.suffix.lower() == ".tflite":
            raise ConfigError(f"--ray runs tfguess models (TF_FILES or model.keras), not an "
                              f"exported .tflite: {path}")
        meta = read_meta(path)
        ref = BackboneRef.from_meta(meta["backbone"])
        if ref.precision != "float32":
            raise ConfigError(f"--ray runs float32 models only; {path} uses the {ref.precision} "
                              "engine: guess without --ray")
        if ensemble_members(meta):
            raise ConfigError(f"--ray runs models of one backbone; {path} is an ensemble "
                              f"({backbone_names(meta)}): "
                              "guess without --ray, or train with --backbone for one backbone")
        ref = guessing_engine(path, meta, ref)  # the engine local guessing runs, int8 included
        engine = engine_bytes(ref, lambda: load_classifier(path).backbone, log)
        connect(address)
        return cls(list(meta["labels"]), ref, read_head(path), engine, address, workers,
                   model_identity(path))

    def predict(self, paths: list[Path], top_k: int = 0, batch_size: int = 32, workers: int = 0,
                progress: bool = False) -> Iterator[Prediction]:
        k = top_k if top_k > 0 else len(self.labels)
        bar = _progress(len(paths), "classifying (ray)", progress)
        rows = [(str(p), "") for p in paths]
        head = tuple(self.head.arrays().values())  # Head's fields, the hidden layer's too
        i = 0
        for batch in map_images(rows, self._engine, self.input_size, self.resize, head=head,
                                workers=self.workers, batch_size=batch_size, preserve_order=True,
                                address=self.address):
            for values, error in zip(batch["values"], batch["error"]):
                path = paths[i]
                i += 1
                if error:
                    yield Prediction(path, error=str(error))
                    continue
                order = np.argsort(-values, kind="stable")[:k]
                yield Prediction(path, [(self.labels[j], float(values[j])) for j in order])
            bar.update(len(batch["error"]))
        bar.close()
        if i != len(paths):  # pragma: no cover - Ray Data lost rows: never copy a partial result
            raise RuntimeError(f"the cluster returned {i} results for {len(paths)} images")


def guess_dir_ray(model: str | Path, src: str | Path, dst: str | Path,
                  config: GuessConfig | None = None, *, progress: bool = True,
                  log: Callable[[str], None] = print, **overrides):
    """:func:`predict.guess_dir` with the classification on the cluster at ``config.ray``
    (``auto`` when None), ``config.ray_workers`` actors; the copies and the manifest are written
    by this process, under the local rules. Keyword ``overrides`` replace ``config``'s fields."""
    from tfguess.guess.predict import guess_dir

    config = configure(GuessConfig, config, overrides)
    predictor = RayPredictor.load_ray(model, config.ray or "auto", config.ray_workers, log)
    return guess_dir(model, src, dst, config, progress=progress, log=log, predictor=predictor)
