"""Silence the C++ start-up chatter of TensorFlow and LiteRT (printed before any log setting applies)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

_LOCK = threading.RLock()  # one redirection at a time: threads must not restore each other's


@contextlib.contextmanager
def quiet_stderr():
    """Send file descriptor 2 to /dev/null for the duration; Python exceptions still propagate."""
    if os.environ.get("TFGUESS_VERBOSE"):
        yield
        return
    with _LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def import_tensorflow():
    """TensorFlow, imported with its start-up chatter silenced, devices included: on a machine
    without a GPU the first device query logs a "failed call to cuInit" error, harmless there."""
    with quiet_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
