"""Representation analysis of one counting run (the paper's Fig. 2 panels, its metrics, the theory check).

    python scripts/analyze.py run=runs/counting/2026-..._default_s1
    python scripts/analyze.py run=RUN_DIR checkpoint=final out=/tmp/analysis

Keys (hydra-style key=value):
  run         the run directory written by train.py task=counting (required)
  checkpoint  best | final (default: best.pt if present, else final.pt)
  out         output folder (default: RUN_DIR/analysis)
  device      auto | cpu | cuda | cuda:N (default auto)
  threads     torch CPU threads (default 1)

Writes pca.png, distances.png, reconstructions.png, curves.png,
metrics.json and embeddings.npz, and prints the report and the one-line
theory check. A bad run directory exits with code 2 and a message.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pjepa_ext.analysis import RunDirectoryError, analyze_run  # noqa: E402
from tdmpc2.cli import parse_key_values  # noqa: E402

DEFAULTS = {"run": None, "checkpoint": None, "out": None, "device": "auto", "threads": "1"}


def parse_args(argv: list[str]) -> dict:
    """Return the options: DEFAULTS overridden by ``key=value`` arguments; raise ValueError on a bad one."""
    options = parse_key_values(argv, DEFAULTS)
    if options["run"] is None:
        raise ValueError("run=RUN_DIR is required (a directory written by train.py task=counting)")
    try:
        options["threads"] = int(options["threads"])
    except ValueError:
        options["threads"] = 0
    if options["threads"] < 1:
        raise ValueError(f"threads must be a positive integer, got {options['threads']!r}")
    return options


def format_report(metrics: dict) -> str:
    """Return the printed summary of ``metrics`` (as written to metrics.json)."""
    ck, report = metrics["checkpoint"], metrics["report"]
    lines = [
        f"run {metrics['run_dir']}  (variant {metrics['variant']}, aux {metrics['aux']})",
        f"checkpoint {ck['name']}: {ck['updates']:,} updates, step {ck['step']:,}",
        "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items()),
        "nc recall per count: " + " ".join(f"{k}:{v:.2f}" for k, v in metrics["nc_recall"].items()),
        f"coarse (0-2/3-5/6-8) nc accuracy {metrics['coarse_groups']['nc_accuracy']:.4g}",
    ]
    dec = metrics["decoder"]
    lines.append(f"decoder probe MSE {dec['mse']:.4g} (pixels in [-1, 1])" if dec["available"] else dec["note"])
    lines.append(metrics["theory"]["summary"])
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        options = parse_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(options["threads"])
    try:
        _, metrics = analyze_run(options["run"], options["checkpoint"], options["out"], options["device"])
    except (RunDirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = options["out"] or str(Path(options["run"]) / "analysis")
    print(format_report(metrics))
    print(f"wrote {out}/: " + ", ".join(k for k, v in metrics["files"].items() if v == "written"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
