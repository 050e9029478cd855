"""The one error type at the boundary.

Everything a user or the operating system can cause (a missing folder, a bad flag value, a damaged
model file, a read-only destination) is a :class:`TfguessError` or a subclass, raised with a
message that names the path or value and the fix. The command line prints it as one line and exits
with code 2; a notebook catches it like any exception. ``tfguess.data.images.ImageError`` (one
unusable image file) is one too, but it is raised per file and caught where it is raised from, to
skip that file with its reason: it does not end a command.
"""

from __future__ import annotations

import errno


class TfguessError(Exception):
    """An error a user or the OS can cause: the message names the file or value and the fix."""

    exit_code = 2


class ConfigError(TfguessError, ValueError):
    """A setting out of range or unknown (a flag, a backbone name, an export format)."""


class DatasetError(TfguessError, ValueError):
    """The labelled photos folder cannot be used as it is."""


class ModelError(TfguessError, ValueError):
    """A model file or run folder is missing, damaged or not a tfguess model."""


class WeightsUnavailableError(TfguessError, RuntimeError):
    """Pretrained weights can't be had: the message says which file to fetch and where to put it."""


class ExportError(TfguessError, RuntimeError):
    """An export cannot be written as asked."""


class ReportError(TfguessError, ValueError):
    """TF_FILES lacks what the report needs; the message names the file and the fix."""


_OS_HINTS = {
    errno.EACCES: "check its permissions (ls -l), or choose a folder you can write to",
    errno.EPERM: "check its permissions (ls -l), or choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENOSPC: "the disk is full: free some space and run the command again",
    errno.EDQUOT: "your disk quota is used up: free some space and run the command again",
    errno.ENAMETOOLONG: "the name is too long for the file system: use a shorter name",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "a folder was given where a file was expected: check the path",
    errno.EEXIST: "something is already there: choose another name",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer --workers",
    errno.EIO: "the disk reported an input/output error: check the device",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    what = exc.strerror or exc.__class__.__name__
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p]
    where = f"{paths[0]}" + (f" -> {paths[1]}" if len(paths) > 1 else "") if paths else ""
    hint = _OS_HINTS.get(exc.errno or -1)
    text = f"{where}: {what}" if where else what
    return f"{text} ({hint})" if hint else text
