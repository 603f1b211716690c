"""Train a TD-MPC2 / P-JEPA agent online.

    python train.py task=pendulum                 # stock TD-MPC2
    python train.py task=counting aux=reward      # P-JEPA, the paper's main experiment
    python train.py task=counting variant=dyn_only

Every run writes into its own directory under runs/: the resolved config,
train.csv, eval.csv (and analysis.csv on the counting task), checkpoints,
the replay (replay/) and, with save_video=true, the evaluation videos (videos/);
loggers=[wandb,tensorboard] sends the same rows to the trackers. A run stopped
by SIGTERM or SIGINT writes a resumable checkpoint and exits with code 75;
``resume=RUN_DIR`` (or ``resume=true`` with a fixed ``hydra.run.dir``)
continues it, as it does a run killed outright. The run itself is
``experiments.training.run``.
"""
from __future__ import annotations

import errno
import sys

import hydra
from omegaconf import DictConfig
from termcolor import colored

from experiments.training import USER_ERRORS, RunStopped, run
from tdmpc2 import resume


@hydra.main(config_path=".", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except RunStopped as stopped:
        print(colored(str(stopped), "yellow"), file=sys.stderr)
        sys.exit(resume.EXIT_STOPPED)
    except USER_ERRORS as err:
        print(colored(f"error: {err}", "red"), file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(colored(f"error: {err}. Checkpoints are written atomically, so the newest one is whole: "
                      f"free space, then continue the run with resume=RUN_DIR", "red"), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
