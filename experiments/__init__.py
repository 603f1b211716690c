"""Running experiments: one training run (the body of train.py) and comparisons of variants over tasks and seeds
(scripts/compare.py). It imports the core (``tdmpc2``), the tasks (``envs``) and the extension (``pjepa_ext``);
none of them imports it."""
