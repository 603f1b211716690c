"""Train a TD-MPC2 / P-JEPA agent online.

    python train.py task=pendulum                 # stock TD-MPC2
    python train.py task=counting aux=reward      # P-JEPA, the paper's main experiment
    python train.py task=counting variant=dyn_only

Every run writes into its own directory under runs/: the resolved config,
train.csv, eval.csv (and analysis.csv on the counting task), checkpoints,
and with save_video=true the evaluation videos (videos/). loggers=[wandb,tensorboard]
sends the same rows to the trackers. The run itself is ``experiments.training.run``.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig
from termcolor import colored

from experiments.training import USER_ERRORS, run


@hydra.main(config_path=".", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except USER_ERRORS as err:
        print(colored(f"error: {err}", "red"), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
