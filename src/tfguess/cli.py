"""The ``tfguess`` command: argument parsing only; the work is done by the Python API.

Each command's flags are generated from the fields of its config (:mod:`tfguess.core.config`),
so a setting's name, default, choices and help are written once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from tfguess.core.config import (  # noqa: E402
    ExportConfig,
    GuessConfig,
    ServeConfig,
    TrainConfig,
)

GUESS_FIELDS = ("top_k", "engine", "tta")   # the flags of `guess`; guess-dir has them all


def add_config_flags(parser, cls, only: tuple[str, ...] | None = None, **defaults) -> None:
    """One flag per field of the config class ``cls`` (see :func:`tfguess.core.config.option`):
    ``--field-name`` or the field's own flag, typed by the field's annotation, with its default
    (or ``defaults``), help, choices, metavar and argparse group."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or (only is not None and f.name not in only):
            continue
        kwargs = dict(meta.get("argparse", {}))
        kwargs.update(dest=f.name, help=meta.get("help"))
        default = defaults.get(f.name, f.default)
        if meta.get("env"):
            default = os.environ.get(meta["env"]) or default
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
        kind = hints[f.name]
        if kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        elif kwargs.get("action") == "append":
            kwargs["default"] = None if default else []   # an empty list: the config's own default
        elif meta.get("convert") is None:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            if base in (int, float):
                kwargs["type"] = base
        target = parser
        if meta.get("group"):
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        target.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), **kwargs)


def config_from_args(cls, args: argparse.Namespace, only: tuple[str, ...] | None = None):
    """The config ``cls`` of the parsed flags; fields with a ``convert`` parser are converted
    here (its errors are TfguessErrors, printed as one line like every other)."""
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name) or (only is not None and f.name not in only):
            continue
        value = getattr(args, f.name)
        if value is None and isinstance(f.default, tuple):
            continue   # an append flag never given: the config's default
        if value is not None and f.metadata.get("convert") == "duration":
            from tfguess.training.plan import parse_duration

            value = parse_duration(value)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on TF_FILES/data/<label>/*")
    p.add_argument("tf_files", help="folder that holds data/<label>/ and receives the model")
    add_config_flags(p, TrainConfig)
    _no_wait_argument(p, "TF_FILES")


def _no_wait_argument(p, folder: str) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help=f"when another run is writing into {folder}, stop (exit 2) instead of "
                        "waiting for it")


def build_parser() -> argparse.ArgumentParser:
    from tfguess import __version__
    from tfguess.export.formats import FORMAT_NAMES

    parser = argparse.ArgumentParser(
        prog="tfguess",
        description="Train an image classifier from a folder of labelled photos; guess, sort, export.",
    )
    parser.add_argument("--version", action="version", version=f"tfguess {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (for reporting a bug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)

    p = sub.add_parser("guess", help="print the labels with scores for images")
    p.add_argument("model", help="TF_FILES folder, model.keras, or an exported .tflite")
    p.add_argument("images", nargs="+")
    add_config_flags(p, GuessConfig, only=GUESS_FIELDS, top_k=0)
    p.add_argument("--json", action="store_true")
    p._option_string_actions["--top-k"].help = "labels to print (default: all)"

    p = sub.add_parser("guess-dir", help="copy every image of SRC into DST as <label>-<score>.<ext>")
    p.add_argument("model")
    p.add_argument("src")
    p.add_argument("dst")
    add_config_flags(p, GuessConfig)

    p = sub.add_parser("evaluate", help="write the HTML evaluation report of a trained TF_FILES")
    p.add_argument("tf_files")

    p = sub.add_parser("export", help="export the trained model (TFLite, Core ML, SavedModel, frozen graph, ONNX)")
    p.add_argument("tf_files")
    add_config_flags(p, ExportConfig)
    p._option_string_actions["--format"].choices = FORMAT_NAMES

    sub.add_parser("backbones", help="list the backbones and where their weights come from")
    p = sub.add_parser("serve", help="a web page and a REST API for the model (needs the serve extra)")
    p.add_argument("model", help="TF_FILES folder (adds /report/ and /review), model.keras or .tflite")
    add_config_flags(p, ServeConfig)
    _suggest_parser(sub)
    return parser


def _suggest_parser(sub) -> None:
    p = sub.add_parser("suggest", help="the most informative unlabelled images of DIR, as CSV")
    p.add_argument("tf_files", help="TF_FILES with photos in data/<label>/ (2 labels at least)")
    p.add_argument("dir", help="folder of unlabelled photos (only read)")
    p.add_argument("--n", type=_at_least_one, default=50, help="how many (default 50)")
    p.add_argument("--strategy", choices=["margin", "entropy", "kcenter-margin", "random"],
                   default=None, help="default: the inbox page's (see docs/guide/inbox.md)")
    p.add_argument("--out", help="write the CSV here (never over an existing file); default: stdout")


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of 1 or more (argparse says which flag, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


# --- the commands: each calls the Python API ------------------------------------------------

def _train(args, progress: bool) -> int:
    from tfguess.core.locks import run_folder_lock
    from tfguess.core.runfolder import RunFolder
    from tfguess.training.train import train

    config = config_from_args(TrainConfig, args)
    with run_folder_lock(args.tf_files, "train", create=bool(config.image_dir),
                         wait=not args.no_wait):  # the model and its report: one run at a time
        result = train(args.tf_files, config, progress=progress)
        report_page = RunFolder.at(args.tf_files).report / "index.html"
        if config.report and not (result.unchanged and report_page.exists()):
            from tfguess.curate.report import write_report

            write_report(args.tf_files, progress=progress)
    return 0 if result else 1


def _guess(args, progress: bool) -> int:
    from tfguess.guess.predict import guess

    config = config_from_args(GuessConfig, args, only=GUESS_FIELDS)
    return 1 if guess(args.model, args.images, config, as_json=args.json) else 0


def _guess_dir(args, progress: bool) -> int:
    config = config_from_args(GuessConfig, args)
    if config.ray:
        from tfguess.guess.distributed import guess_dir_ray

        result = guess_dir_ray(args.model, args.src, args.dst, config, progress=progress)
    else:
        from tfguess.guess.predict import guess_dir

        result = guess_dir(args.model, args.src, args.dst, config, progress=progress)
    return 1 if result.skipped else 0


def _evaluate(args, progress: bool) -> int:
    from tfguess.core.locks import run_folder_lock
    from tfguess.curate.report import write_report

    with run_folder_lock(args.tf_files, "evaluate"):  # not while a train writes the model
        write_report(args.tf_files, progress=progress)
    return 0


def _export(args, progress: bool) -> int:
    from tfguess.export import export

    config = dataclasses.replace(config_from_args(ExportConfig, args), quiet=not progress)
    export(args.tf_files, config)   # checks the flags first; prints one "Wrote" line a file
    return 0


def _serve(args, progress: bool) -> int:
    from tfguess.serve import serve

    serve(args.model, config_from_args(ServeConfig, args))
    return 0


def _suggest(args, progress: bool) -> int:
    from tfguess.curate.inbox import Inbox, write_suggestions

    inbox = Inbox(args.tf_files, args.dir, progress=progress, log=lambda m: print(m, file=sys.stderr))
    text = write_suggestions(inbox.suggest(args.n, args.strategy), args.out)
    print(f"Wrote {args.out}" if args.out else text, end="\n" if args.out else "")
    return 0


def _backbones(args, progress: bool) -> int:
    from tfguess.engine.backbones import describe_backbones

    rows = describe_backbones()
    cols = ["name", "input_size", "feature_dim", "preprocessing", "resize", "available", "weights_source"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    print("  ".join(c.ljust(widths.get(c, 0)) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in cols))
    return 0


COMMANDS = {"train": _train, "guess": _guess, "guess-dir": _guess_dir, "evaluate": _evaluate,
            "export": _export, "serve": _serve, "suggest": _suggest, "backbones": _backbones}


def _run(args) -> int:
    return COMMANDS[args.command](args, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a user or the OS can cause print one line and exit 2; a broken
    pipe (``tfguess guess ... | head``) exits quietly; anything else is a bug: one line, exit 70,
    and the traceback only with ``--debug``."""
    _printable_output()
    args = build_parser().parse_args(argv)
    from tfguess.core.errors import TfguessError, describe_os_error

    _one_line_warnings()
    prefix = f"tfguess {args.command}: error:"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except TfguessError as exc:
        _debug(args)
        print(f"{prefix} {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        _debug(args)
        print(f"{prefix} {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        _debug(args)
        print(f"{prefix} unexpected {exc.__class__.__name__}: {exc} (this is a bug in tfguess: "
              "run again with --debug and report the traceback)", file=sys.stderr)
        return 70


def _printable_output() -> None:
    """File names that are not UTF-8 print as ``\\xe9`` escapes instead of failing the run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # pragma: no cover - replaced streams
            pass


def _one_line_warnings() -> None:
    """tfguess's and Pillow's warnings about an image (e.g. used without its EXIF rotation) as
    one line each, without the source line of the code that warned."""
    import warnings

    from tfguess.data.images import ImageWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ImageWarning) or f"{os.sep}PIL{os.sep}" in str(filename):
            print(f"tfguess: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _debug(args) -> None:
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exc()


def _silence_stdout() -> None:
    """After a broken pipe, send what is still buffered to /dev/null so Python's exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
