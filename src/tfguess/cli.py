"""The ``tfguess`` command: argument parsing only; the work is done by the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from tfguess.core.config import DEFAULT_TEST_PCT, RESIZE_CHOICES, TrainConfig  # noqa: E402


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on TF_FILES/data/<label>/*")
    p.add_argument("tf_files", help="folder that holds data/<label>/ and receives the model")
    p.add_argument("--image-dir", help="labelled photos folder (default: TF_FILES/data)")
    p.add_argument("--eval-dir", help="an extra labelled folder (<label>/ sub-folders) to evaluate on")
    p.add_argument("--backbone", default=TrainConfig.backbone,
                   help="see `tfguess backbones`; auto: the EfficientNet-Lite that cross-validates best "
                   "(one feature extraction per backbone, once)")
    p.add_argument("--weights", help="local weights file for a backbone that downloads its own")
    p.add_argument("--tfhub-module", help="TF Hub image feature-vector handle or local SavedModel dir")
    p.add_argument("--image-size", type=int,
                   help="input size in pixels: larger than an EfficientNet-Lite's own (224, 240, 260) "
                   "shows it finer detail at (size/own)^2 the time, e.g. 288 for fine-grained labels "
                   "or small objects; required for a TF Hub module without static dims")
    p.add_argument("--resize", default=TrainConfig.resize, metavar="|".join(RESIZE_CHOICES),
                   help="how a photo is made square for the backbone: squash (the whole photo, "
                   "distorted; what MediaPipe does), crop (the central 87.5%%), pad (the whole "
                   "photo on grey 127), auto (the default: crop when portrait and landscape "
                   "photos are both common, else squash)")
    p.add_argument("--validation-pct", type=float, default=TrainConfig.validation_pct)
    p.add_argument("--test-pct", type=float, default=None,
                   help=f"share held out as the test split (default {DEFAULT_TEST_PCT:g}; "
                   "0 with --eval-dir, which is then the test set)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    p.add_argument("--l2", type=float, default=TrainConfig.l2)
    p.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--engine", choices=["auto", "tflite", "keras"], default="auto",
                   help="how the frozen backbone runs (keras: the plain Keras path)")
    p.add_argument("--precision", choices=["auto", "float32", "int8"], default=TrainConfig.precision,
                   help="the TFLite engine's arithmetic (int8: calibrated on the training photos, "
                        "faster; auto: float32 features, and guessing runs an int8 engine where the "
                        f"CPU has int8 dot-product instructions; default {TrainConfig.precision})")
    p.add_argument("--summaries-dir", help="write TensorBoard logs of training here")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the HTML evaluation report")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (default: one per core)")
    g = p.add_argument_group("accuracy beyond a frozen backbone")
    g.add_argument("--augment", choices=["none", "light", "strong"], default=None,
                   help="augmentation of the views (default light) and of fine-tuning (default strong)")
    g.add_argument("--no-flip", action="store_true",
                   help="never mirror images (text, logos, left/right data)")
    g.add_argument("--views", type=int, default=TrainConfig.views,
                   help="fixed augmented views per training image, cached like the others")
    g.add_argument("--hidden-units", type=int, default=TrainConfig.hidden_units,
                   help="a hidden ReLU layer of this size in the head (0: none)")
    g.add_argument("--fine-tune", action="store_true",
                   help="then train the top of the backbone too (slower, most accurate)")
    g.add_argument("--fine-tune-blocks", type=int, default=TrainConfig.fine_tune_blocks)
    g.add_argument("--fine-tune-epochs", type=int, default=TrainConfig.fine_tune_epochs)
    g.add_argument("--fine-tune-lr", type=float, default=TrainConfig.fine_tune_lr)
    g.add_argument("--fine-tune-views", type=int, default=None,
                   help="augmented views an image cached through the frozen lower blocks "
                        "(default: one per epoch, within memory; 0: fresh views through the whole "
                        "backbone every epoch, slower)")
    g.add_argument("--time-limit", metavar="DURATION",
                   help="pick the most accurate recipe (backbone, size, views, fine-tuning) that "
                        "fits this time on this machine, e.g. 90s, 10m, 1h30m; the plan is printed "
                        "first")
    _ray_arguments(p, "extract the bottlenecks")
    p.add_argument("--keep-placeholders", action="store_true",
                   help="use images that look like placeholders (flat background with a little "
                        "text or an icon) instead of skipping them")
    p.add_argument("--follow-links", action="store_true",
                   help="follow links to folders outside a label folder (by default not followed)")
    _no_wait_argument(p, "TF_FILES")


def _no_wait_argument(p, folder: str) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help=f"when another run is writing into {folder}, stop (exit 2) instead of "
                        "waiting for it")


def _ray_arguments(p, what: str) -> None:
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help=f"{what} on a Ray cluster (auto: this machine's, else a local one; "
                        "needs pip install 'tfguess[ray]'; see docs/scale.md)")
    p.add_argument("--ray-workers", type=int, default=0,
                   help="Ray actors (default: one per CPU of the cluster)")


def build_parser() -> argparse.ArgumentParser:
    from tfguess import __version__

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
    p.add_argument("--top-k", type=int, default=0, help="labels to print (default: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--engine", choices=["auto", "tflite", "keras"], default="auto")
    p.add_argument("--tta", action="store_true", help="average in the mirror image's prediction")

    p = sub.add_parser("guess-dir", help="copy every image of SRC into DST as <label>-<score>.<ext>")
    p.add_argument("model")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--recursive", action="store_true")
    p.add_argument("--by-label", action="store_true", help="copy into DST/<label>/")
    p.add_argument("--min-score", type=float, default=0.0,
                   help="below it the label is 'unknown' ('_unknown' when the model has a label "
                        "called 'unknown')")
    p.add_argument("--top-k", type=int, default=3, help="labels recorded in the manifest")
    p.add_argument("--engine", choices=["auto", "tflite", "keras"], default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    _ray_arguments(p, "classify")
    p.add_argument("--again", action="store_true",
                   help="copy every image again, also those an earlier run into DST copied "
                        "(a re-run otherwise resumes; nothing is ever overwritten)")
    p.add_argument("--follow-links", action="store_true",
                   help="follow links to folders outside SRC (by default only those inside SRC)")
    p.add_argument("--tta", action="store_true", help="average in the mirror image's prediction")
    _no_wait_argument(p, "DST")

    p = sub.add_parser("evaluate", help="write the HTML evaluation report of a trained TF_FILES")
    p.add_argument("tf_files")

    p = sub.add_parser("export", help="export the trained model (TFLite, Core ML, SavedModel, frozen graph, ONNX)")
    p.add_argument("tf_files")
    p.add_argument("--format", dest="formats", action="append",
                   choices=["tflite", "coreml", "savedmodel", "frozen-graph", "onnx"],
                   help="repeat for several (default: tflite)")
    p.add_argument("--quantize", choices=["none", "float16", "dynamic", "int8"], default="none")
    p.add_argument("--out", help="output folder (default: TF_FILES/export)")

    sub.add_parser("backbones", help="list the backbones and where their weights come from")
    _serve_parser(sub)
    _suggest_parser(sub)
    return parser


def _suggest_parser(sub) -> None:
    p = sub.add_parser("suggest", help="the most informative unlabelled images of DIR, as CSV")
    p.add_argument("tf_files", help="TF_FILES with photos in data/<label>/ (2 labels at least)")
    p.add_argument("dir", help="folder of unlabelled photos (only read)")
    p.add_argument("--n", type=int, default=50, help="how many (default 50)")
    p.add_argument("--strategy", choices=["margin", "entropy", "kcenter-margin", "random"],
                   default=None, help="default: the inbox page's (see README, Inbox)")
    p.add_argument("--out", help="write the CSV here (never over an existing file); default: stdout")


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="a web page and a REST API for the model (needs the serve extra)")
    p.add_argument("model", help="TF_FILES folder (adds /report/ and /review), model.keras or .tflite")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-upload-mb", type=float, help="request body limit (default 32)")
    p.add_argument("--max-batch", type=int, help="images per network batch (default 32)")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill (default 10)")
    p.add_argument("--queue-size", type=int, help="images in flight; 503 beyond (default 256)")
    p.add_argument("--timeout", dest="timeout_s", type=float, help="seconds per request (default 60)")
    p.add_argument("--inbox", metavar="DIR",
                   help="the inbox page (/inbox): sort this folder of unlabelled photos (only read) "
                        "into TF_FILES/data/<label>/, uncertain ones first")
    p.add_argument("--inbox-every", type=int, default=20, metavar="N",
                   help="the inbox re-trains by itself every N labels (0: only on request)")
    p.add_argument("--api-key", default=os.environ.get("TFGUESS_API_KEY") or None,
                   help="required on every request and page (Authorization: Bearer KEY); default: "
                        "$TFGUESS_API_KEY. Needed to listen beyond this machine")
    p.add_argument("--no-auth", action="store_true",
                   help="listen beyond this machine without an API key (anyone can change the data set)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[],
                   metavar="ORIGIN", help="a web origin (https://host[:port]) whose pages may call "
                                          "the API; repeat for several (default: none)")
    p.add_argument("--access-log", action="store_true", help="print one line per request")


def _run(args) -> int:
    progress = not args.quiet
    from tfguess.core.locks import run_folder_lock

    if args.command == "export":  # train imports TensorFlow only when it needs the backbone
        from tfguess.core.quiet import import_tensorflow

        import_tensorflow()
    if args.command == "train":
        from tfguess.training.train import train

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in vars(args).items() if k in fields}
        if values.get("time_limit") is not None:
            from tfguess.training.plan import parse_duration

            values["time_limit"] = parse_duration(values["time_limit"])
        config = TrainConfig(**values)
        with run_folder_lock(args.tf_files, "train", create=bool(config.image_dir),
                             wait=not args.no_wait):  # the model and its report: one run at a time
            result = train(args.tf_files, config, progress=progress)
            if config.report:
                from tfguess.curate.report import write_report

                write_report(args.tf_files, progress=progress)
        return 0 if result else 1
    if args.command == "guess":
        from tfguess.guess.predict import guess

        return 1 if guess(args.model, args.images, args.top_k, args.json, args.engine,
                          tta=args.tta) else 0
    if args.command == "guess-dir":
        from tfguess.guess.predict import guess_dir

        options = dict(recursive=args.recursive, by_label=args.by_label, min_score=args.min_score,
                       top_k=args.top_k, engine=args.engine, batch_size=args.batch_size,
                       workers=args.workers, progress=progress,
                       again=args.again, follow_links=args.follow_links, tta=args.tta,
                       wait=not args.no_wait)
        if args.ray:
            from tfguess.guess.distributed import guess_dir_ray

            result = guess_dir_ray(args.model, args.src, args.dst, address=args.ray,
                                   ray_workers=args.ray_workers, **options)
        else:
            result = guess_dir(args.model, args.src, args.dst, **options)
        return 1 if result.skipped else 0
    if args.command == "evaluate":
        from tfguess.curate.report import write_report

        with run_folder_lock(args.tf_files, "evaluate"):  # not while a train writes the model
            write_report(args.tf_files, progress=progress)
        return 0
    if args.command == "export":
        from tfguess.export import export

        export(args.tf_files, args.formats or ["tflite"], quantize=args.quantize, out_dir=args.out,
               quiet=args.quiet)   # prints one "Wrote" line a file
        return 0
    if args.command == "serve":
        from tfguess.serve import ServeLimits, serve

        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeLimits)
                 if getattr(args, f.name, None) is not None}
        given.setdefault("max_files", min(ServeLimits.max_files,
                                          given.get("queue_size", ServeLimits.queue_size)))
        serve(args.model, args.host, args.port, ServeLimits(**given), api_key=args.api_key,
              no_auth=args.no_auth, cors_origins=args.cors_origins, access_log=args.access_log,
              inbox_dir=args.inbox, inbox_every=args.inbox_every)
        return 0
    if args.command == "suggest":
        from tfguess.curate.inbox import Inbox, write_suggestions

        inbox = Inbox(args.tf_files, args.dir, progress=progress, log=lambda m: print(m, file=sys.stderr))
        text = write_suggestions(inbox.suggest(args.n, args.strategy), args.out)
        print(f"Wrote {args.out}" if args.out else text, end="\n" if args.out else "")
        return 0
    if args.command == "backbones":
        from tfguess.engine.backbones import describe_backbones

        rows = describe_backbones()
        cols = ["name", "input_size", "feature_dim", "preprocessing", "resize", "available", "weights_source"]
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
        print("  ".join(c.ljust(widths.get(c, 0)) for c in cols))
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in cols))
        return 0
    raise AssertionError(args.command)


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
