"""Training and evaluation curves of one run, into one PNG (no tracker needed).

    python scripts/plot_run.py run=runs/pendulum/2026-..._default_s1
    python scripts/plot_run.py run=RUN_DIR out=/tmp/curves.png x=minutes

Keys (hydra-style key=value):
  run   the run directory written by train.py (required)
  out   the PNG to write (default: RUN_DIR/run_curves.png)
  x     updates | step | minutes: the x axis (default updates)

Draws the episode returns (evaluation and training), the losses, the
gradient norm and the speed, and for counting runs the representation
metrics of analysis.csv; a panel only where the run has its data. A
directory that is not a run exits with code 2 and a message.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdmpc2.plots import X_AXES, NotARunError, plot_run  # noqa: E402
from tdmpc2.cli import parse_key_values  # noqa: E402

DEFAULTS = {"run": None, "out": None, "x": "updates"}


def parse_args(argv: list[str]) -> dict:
    """Return the options: DEFAULTS overridden by ``key=value`` arguments; raise ValueError on a bad one."""
    options = parse_key_values(argv, DEFAULTS)
    if options["run"] is None:
        raise ValueError("run=RUN_DIR is required (a directory written by train.py)")
    if options["x"] not in X_AXES:
        raise ValueError(f"x={options['x']!r} is unknown; allowed values: {', '.join(X_AXES)}")
    return options


def main(argv: list[str]) -> int:
    try:
        options = parse_args(argv)
        path, panels = plot_run(options["run"], options["out"], options["x"])
    except (NotARunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {', '.join(panels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
