"""Compare variants (stock TD-MPC2, P-JEPA, ...) over tasks and seeds: train every combination through a
hydra launcher, then write learning curves, an across-task aggregate, report.md and summary.csv into one folder.

    python scripts/compare.py tasks=[cup-catch,reacher-easy] variants=[stock,pjepa] seeds=[1,2,3] steps=50000
    python scripts/compare.py tasks=[walker-walk] obs=rgb variants=[stock,pjepa,pjepa:random]  # pixels
    python scripts/compare.py ... launcher=local              # in parallel on this machine, one thread per run
    python scripts/compare.py ... launcher=slurm launcher.params.partition=gpu launcher.params.timeout_min=600
    python scripts/compare.py ... +train.model_size=1 +train.mpc=false   # any train.py setting for every run
    python scripts/compare.py runs=['runs/compare/*/runs'] out=runs/compare/all   # aggregate runs made elsewhere

Settings and their meaning: experiments/conf/compare.yaml and experiments/conf/launcher/. Exits with code 1
when a run it launched did not complete (the report lists it), 2 on bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from termcolor import colored  # noqa: E402

from experiments.compare import CompareError, run_comparison, summary_lines  # noqa: E402
from experiments.runs import COMPLETE  # noqa: E402
from tdmpc2.extras import MissingExtraError, require  # noqa: E402


@hydra.main(config_path=str(ROOT / "experiments" / "conf"), config_name="compare", version_base=None)
def main(cfg: DictConfig) -> None:
    command = " ".join(["python scripts/compare.py", *HydraConfig.get().overrides.task])
    try:
        require("compare", "scripts/compare.py")
        paths, planned = run_comparison(cfg, Path(HydraConfig.get().runtime.output_dir), command)
    except (CompareError, MissingExtraError) as err:
        print(colored(f"error: {err}", "red"), file=sys.stderr)
        sys.exit(2)
    for line in summary_lines(paths, planned):
        print(line)
    if any(r.status != COMPLETE for r in planned):
        sys.exit(1)


if __name__ == "__main__":
    main()
