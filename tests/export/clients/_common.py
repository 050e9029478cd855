"""What every client runner shares: the command line and the JSON it prints.

    python run_CLIENT.py MODEL LIST_FILE

LIST_FILE holds one image path a line. Prints one JSON object {path: [label, score]} (the
top-1 of the client); an image the client cannot classify maps to ["error: ...", 0.0]. Exits 3
when the client cannot load the model at all (the reason on stderr). Runs in the client's own
virtual environment (scripts/client-envs.sh), so it uses nothing of tfguess; Python 3.7-compatible.
"""

import json
import sys


def main(load, classify):
    model, list_file = sys.argv[1], sys.argv[2]
    with open(list_file, encoding="utf-8") as f:
        paths = [line.strip() for line in f if line.strip()]
    try:
        client = load(model)
    except Exception as exc:  # noqa: BLE001 - the runner reports any load failure
        sys.stderr.write(f"cannot load {model}: {type(exc).__name__}: {exc}\n")
        sys.exit(3)
    out = {}
    for path in paths:
        try:
            label, score = classify(client, path)
            out[path] = [label, float(score)]
        except Exception as exc:  # noqa: BLE001
            out[path] = [f"error: {type(exc).__name__}: {exc}", 0.0]
    if hasattr(client, "close"):
        client.close()   # before interpreter shutdown, which some clients do not survive
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
