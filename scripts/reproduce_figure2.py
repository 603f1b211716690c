"""Reproduce the paper's Figure 2: train the four variants, analyse each, write one report.

    python scripts/reproduce_figure2.py                      # the size preset's budget per variant
    python scripts/reproduce_figure2.py --minutes 10 --parallel 2
    python scripts/reproduce_figure2.py --out runs/figure2/try1 --reuse   # re-analyse finished runs, continue stopped ones
    python scripts/reproduce_figure2.py --minutes 2 batch_size=64         # extra overrides go to train.py

Variants (pjepa_ext.figure2.VARIANTS): reward auxiliary (variant=pjepa aux=reward),
random auxiliary (variant=pjepa aux=random), reward loss only (variant=aux_only
aux=reward), dynamics loss only (variant=dyn_only aux=none). Each trains as one
``train.py task=counting`` process into OUT/<name>/ (its console log in
OUT/<name>.log), then scripts/analyze.py's analysis runs on its best and final
checkpoints (OUT/<name>/analysis/ and OUT/<name>/analysis_final/).

Writes OUT/figure2.png (rows: PCA | distance heatmap | reconstructions, at the
best checkpoint, as the paper plots), OUT/figure2_final.png, OUT/metrics.csv
and OUT/report.md (the metrics table, the theory checks, and whether each of
the paper's claims reproduced, with the numbers). Exit code 1 if a variant failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pjepa_ext import figures  # noqa: E402
from pjepa_ext.analysis import RunDirectoryError, analyze_run  # noqa: E402
from pjepa_ext.figure2 import (TABLE_COLUMNS, VARIANTS, claims_table, evaluate_claims,  # noqa: E402
                               markdown_table, metrics_row)

CHECKPOINTS = ("best", "final")
PROGRESS_EVERY_S = 60.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Return the parsed options; arguments that are not options are hydra overrides passed to train.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None,
                        help="train_minutes per variant (default: the size preset's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/figure2/<timestamp>)")
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every variant (default 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip training a variant whose run directory already has final.pt "
                             "(one that was stopped continues from its newest checkpoint)")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for train.py, e.g. batch_size=64")
    args = parser.parse_args(argv)
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    owned = [o for o in args.overrides if o.split("=")[0].lstrip("+~") in ("variant", "aux", "task", "exp_name",
                                                                           "hydra.run.dir", "seed", "resume")]
    if owned:
        parser.error(f"overrides {owned} are set by this script (use --seed, --variants)")
    if args.out is None:
        args.out = ROOT / "runs" / "figure2" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return args


def train_command(name: str, args: argparse.Namespace) -> list[str]:
    """Return the train.py command line of variant ``name``."""
    overrides, _ = VARIANTS[name]
    # resume=true: a variant whose earlier attempt was stopped continues from its newest checkpoint.
    cmd = [sys.executable, str(ROOT / "train.py"), "task=counting", *overrides, f"exp_name=fig2_{name}",
           f"seed={args.seed}", f"hydra.run.dir={args.out.resolve() / name}", "resume=true"]
    if args.minutes is not None:
        cmd.append(f"train_minutes={args.minutes}")
    if args.parallel > 1 and not any(o.startswith("threads=") for o in args.overrides):
        cmd.append(f"threads={max(1, (os.cpu_count() or 1) // args.parallel)}")
    return cmd + list(args.overrides)


def latest_progress(run_dir: Path) -> str:
    """Return a short line on the newest analysis.csv row of a running variant."""
    path = run_dir / "analysis.csv"
    try:
        row = pd.read_csv(path).iloc[-1]
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError, IndexError):
        return "seeding / no analysis row yet"
    return (f"{int(row['updates']):,} updates, accuracy {row['nc_accuracy']:.3f}, ratio {row['distance_ratio']:.3f}, "
            f"rank {row['effective_rank']:.2f}, {row['elapsed'] / 60:.1f} min")


def train_variant(name: str, args: argparse.Namespace, lock: threading.Lock) -> tuple[int, float]:
    """Train variant ``name`` (log in OUT/<name>.log); return ``(exit code, seconds)``."""
    run_dir = args.out / name
    if args.reuse and (run_dir / "final.pt").is_file():
        with lock:
            print(f"[{name}] reusing {run_dir}", flush=True)
        return 0, 0.0
    cmd = train_command(name, args)
    with lock:
        print(f"[{name}] training: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(args.out / f"{name}.log", "w") as log:
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - start
    with lock:
        status = "done" if code == 0 else f"FAILED (exit {code}, see {args.out / f'{name}.log'})"
        print(f"[{name}] {status} after {seconds / 60:.1f} min: {latest_progress(run_dir)}", flush=True)
    return code, seconds


def train_all(args: argparse.Namespace) -> dict[str, tuple[int, float]]:
    """Train the chosen variants, ``--parallel`` at a time, printing progress; return name -> (exit code, seconds)."""
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {name: pool.submit(train_variant, name, args, lock) for name in args.variants}
        next_report = time.time() + PROGRESS_EVERY_S
        while not all(f.done() for f in futures.values()):
            time.sleep(1.0)
            if time.time() >= next_report:
                next_report += PROGRESS_EVERY_S
                with lock:
                    for name, f in futures.items():
                        if f.running():
                            print(f"[{name}] {latest_progress(args.out / name)}", flush=True)
        return {name: f.result() for name, f in futures.items()}


def analyse_all(args: argparse.Namespace, trained: dict) -> dict[str, dict]:
    """Analyse every trained variant at each checkpoint; return checkpoint -> name -> (analysis, metrics)."""
    results: dict[str, dict] = {c: {} for c in CHECKPOINTS}
    for name in args.variants:
        if trained[name][0] != 0:
            continue
        for checkpoint in CHECKPOINTS:
            out = args.out / name / ("analysis" if checkpoint == "best" else f"analysis_{checkpoint}")
            try:
                results[checkpoint][name] = analyze_run(args.out / name, checkpoint, out)
            except RunDirectoryError as err:
                print(f"[{name}] analysis at {checkpoint} failed: {err}", flush=True)
                continue
            print(f"[{name}] {checkpoint}: {results[checkpoint][name][1]['theory']['summary']}", flush=True)
    return results


def figure_rows(results: dict) -> list[dict]:
    """Return the figure rows (PCA | heatmap | reconstructions) of analysed variants, in VARIANTS order."""
    rows = []
    for name, (result, metrics) in results.items():
        idx = result.figure_idx
        rec = result.reconstructions
        report = metrics["report"]
        rows.append({
            "label": (f"{VARIANTS[name][1]}: {result.run.checkpoint} checkpoint, {result.run.updates:,} updates; "
                      f"acc {report['nc_accuracy']:.2f}, ratio {report['distance_ratio']:.2f}"),
            "emb": result.probes.eval_emb[idx], "counts": result.probes.eval_set.counts[idx],
            "obs": rec.obs if rec is not None else None, "recon": rec.recon if rec is not None else None,
        })
    return rows


def write_report(args: argparse.Namespace, argv: list[str], trained: dict, results: dict, seconds: float) -> Path:
    """Write metrics.csv, figure2.png, figure2_final.png and report.md into OUT; return report.md's path."""
    table = []
    for checkpoint in CHECKPOINTS:
        for name, (_, metrics) in results[checkpoint].items():
            table.append({"variant": name, "checkpoint": checkpoint, **metrics_row(metrics),
                          "run_dir": metrics["run_dir"]})
    pd.DataFrame(table).to_csv(args.out / "metrics.csv", index=False)
    for checkpoint, filename in (("best", "figure2.png"), ("final", "figure2_final.png")):
        if results[checkpoint]:
            figures.save_figure_rows(args.out / filename, figure_rows(results[checkpoint]))
    claims = {c: evaluate_claims({n: metrics_row(m) for n, (_, m) in results[c].items()}) for c in CHECKPOINTS}

    lines = [
        "# Figure 2 reproduction: representations of the four variants on the counting task",
        "",
        f"Command: `python scripts/reproduce_figure2.py {' '.join(argv)}`  ",
        f"Started {datetime.fromtimestamp(time.time() - seconds):%Y-%m-%d %H:%M:%S}; "
        f"total wall-clock **{seconds / 60:.1f} min** (training {args.parallel} at a time, "
        f"train_minutes {args.minutes if args.minutes is not None else 'from the size preset'}, seed {args.seed}); "
        f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU'}.",
        "",
        "## Runs",
        "",
    ]
    for name in args.variants:
        code, secs = trained[name]
        status = "trained" if code == 0 else f"**training failed** (exit {code}; log `{name}.log`)"
        lines.append(f"- `{name}` ({VARIANTS[name][1]}; `{' '.join(VARIANTS[name][0])}`): {status}"
                     f"{f', {secs / 60:.1f} min' if secs else ''} -> `{args.out / name}`")
    lines += ["", "## Figure", "",
              "Rows in order of the list above. Left: PCA of 256 eval-probe embeddings coloured by count; middle: "
              "pairwise L2 distances sorted by count (red lines: count boundaries); right: observation | decoder "
              "reconstruction (contrast-stretched), one per count 0-8.", ""]
    if results["best"]:
        lines += ["At the best checkpoint (highest held-out nearest-centroid accuracy, the paper's rule):", "",
                  "![figure 2](figure2.png)", ""]
    if results["final"]:
        lines += ["At the final checkpoint: [figure2_final.png](figure2_final.png)", ""]
    lines += ["## Metrics", "",
              "On the eval probe set (centroids from the separate centroid set); `coarse_nc_accuracy` groups counts "
              "0-2 / 3-5 / 6-8; `decoder_mse` on pixels in [-1, 1]; `predicted_classes` and `respects_lower_bound` "
              "from the theory check.", "",
              markdown_table(table, ["variant", "checkpoint", *TABLE_COLUMNS]), "",
              "## Theory check", ""]
    for checkpoint in CHECKPOINTS:
        for name, (_, metrics) in results[checkpoint].items():
            lines.append(f"- `{name}` ({checkpoint}): {metrics['theory']['summary']}")
    lines += ["", "## The paper's claims", "",
              "Rules fixed in `pjepa_ext/figure2.py` (RULES) before any run: nine clusters = accuracy >= 0.95, 9 "
              "distinct clusters and a distance ratio at most half of each other variant's; no count structure = "
              "ratio >= 0.9 and accuracy at least 0.2 below the reward run's; coarse groups = fewer than 9 distinct "
              "clusters and three-group accuracy >= 0.8; collapse = effective rank <= 2 and mean distance at most 5% "
              "of the smallest among the other variants.", "",
              claims_table(claims), ""]
    path = args.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    start = time.time()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"figure 2: variants {', '.join(args.variants)} -> {args.out}", flush=True)
    trained = train_all(args)
    results = analyse_all(args, trained)
    seconds = time.time() - start
    report = write_report(args, argv, trained, results, seconds)
    print(f"report: {report}")
    for claim in evaluate_claims({n: metrics_row(m) for n, (_, m) in results["best"].items()}):
        verdict = {True: "reproduced", False: "NOT reproduced", None: "not evaluated"}[claim.reproduced]
        print(f"  {verdict} (best): {claim.statement}: {claim.evidence}")
    print(f"total wall-clock {seconds / 60:.1f} min")
    return 0 if all(code == 0 for code, _ in trained.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
