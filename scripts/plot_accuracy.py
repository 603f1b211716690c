"""Plot held-out accuracy vs wall-clock (or updates) for several runs on one figure.

    python scripts/plot_accuracy.py out=docs/cpu-preset-accuracy.png E2=runs/counting/<dir> E5=runs/counting/<dir>
    python scripts/plot_accuracy.py out=acc.png x=updates fp32=runs/a bf16=runs/b

``x`` is ``minutes`` (default) or ``updates``.
Each ``LABEL=RUN_DIR`` reads ``RUN_DIR/analysis.csv`` (a CSV path works too).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from pjepa_ext.figures import save_accuracy_comparison  # noqa: E402


def main(argv: list[str]) -> int:
    pairs = dict(a.split("=", 1) for a in argv if "=" in a)
    bad = [a for a in argv if "=" not in a]
    out = pairs.pop("out", "accuracy.png")
    x = pairs.pop("x", "minutes")
    if x not in ("minutes", "updates"):
        print(f"error: x={x}; allowed values: minutes, updates", file=sys.stderr)
        return 2
    if bad or not pairs:
        print("usage: plot_accuracy.py out=FILE.png [x=minutes|updates] LABEL=RUN_DIR [LABEL=RUN_DIR ...]", file=sys.stderr)
        return 2
    histories = {}
    for label, run in pairs.items():
        csv = Path(run) if run.endswith(".csv") else Path(run) / "analysis.csv"
        if not csv.is_file():
            print(f"error: {csv} not found (a run directory made with analysis_freq > 0 has it)", file=sys.stderr)
            return 2
        histories[label] = pd.read_csv(csv)
    print(save_accuracy_comparison(out, histories, x=x))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
