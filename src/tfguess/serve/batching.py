"""Micro-batching: images from concurrent requests share the network's batches."""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np


class Saturated(Exception):
    """The queue is full."""


class MicroBatcher:
    """Collects images from concurrent requests into batches for one network thread.

    ``admit(n)`` reserves room for ``n`` images (or raises :class:`Saturated`); each image then
    either goes in with ``submit`` or gives its place back with ``release``. A batch is run as
    soon as it is full, when ``max_wait`` has passed, or when no admitted image is still on its
    way (a lone request does not wait).

    ``model()`` returns ``(predictor, tag)``: the predictor that runs the batch and a tag (the
    weights digest) handed back with each result, so an answer names the model that made it even
    when the model is swapped between two batches. ``on_batch(n)`` is called after each batch.
    """

    def __init__(self, model: Callable[[], tuple[Any, str]], max_batch: int, max_wait_s: float,
                 capacity: int, on_batch: Callable[[int], None] | None = None) -> None:
        self._model = model
        self.max_batch, self.max_wait_s, self.capacity = max_batch, max_wait_s, capacity
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._network = threading.Lock()   # one caller of the network at a time (not thread-safe)
        self._admitted = 0
        self.batches = 0
        self.images = 0
        self._thread = threading.Thread(target=self._loop, name="tfguess-batcher", daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self, n: int) -> None:
        with self._lock:
            if self._admitted + n > self.capacity:
                raise Saturated
            self._admitted += n

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._admitted -= n

    def submit(self, pixels: np.ndarray) -> Future:
        """Queue one admitted image; the future's result is ``(labels, probabilities, tag)``."""
        future: Future = Future()
        future.add_done_callback(lambda _: self.release())
        self._queue.put((pixels, future))
        return future

    def exclusive(self, fn: Callable[[Any], Any]) -> tuple[Any, str]:
        """``(fn(predictor), tag)``, run between two batches, alone on the network: work of an
        admitted image that needs many runs of its own (an occlusion map)."""
        predictor, tag = self._model()
        with self._network:
            return fn(predictor), tag

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._admitted <= len(batch):  # nothing else on its way
                        break
                    try:
                        item = self._queue.get(timeout=min(left, 0.002))
                    except queue.Empty:
                        continue
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        predictor, tag = self._model()
        try:
            with self._network:
                probs = predictor.probabilities(np.stack([pixels for pixels, _ in batch]))
        except Exception as exc:  # the network failed: every waiting request hears why
            for _, future in batch:
                future.set_exception(exc)
            return
        self.batches += 1
        self.images += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for (_, future), p in zip(batch, probs):
            future.set_result((predictor.labels, p, tag))
