"""Print the largest bisimulation of the counting task for an auxiliary target.

    python scripts/bisim.py aux=reward             # 9 classes: {0} {1} ... {8}
    python scripts/bisim.py aux=none               # 1 class: {0 1 2 3 4 5 6 7 8}
    python scripts/bisim.py aux=all target=2 max_count=8

Keys (hydra-style key=value): aux (a registered target or ``all``),
target (the rewarded count), max_count, image_size, dim and seed (used by
targets that read pixels). By Theorem 1, a well-trained P-JEPA model maps
counts of different classes to different embeddings.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from pjepa_ext.aux_targets import AUX_TARGETS  # noqa: E402
from pjepa_ext.bisim import format_partition, predict_counting_partition  # noqa: E402

DEFAULTS = {"aux": "reward", "target": 4, "max_count": 8, "image_size": 64, "dim": 256, "seed": 0}


def parse_args(argv: list[str]) -> dict:
    """Return the options: DEFAULTS overridden by ``key=value`` arguments."""
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"expected key=value, got '{arg}'; keys: {', '.join(DEFAULTS)}")
    given = OmegaConf.to_container(OmegaConf.from_dotlist(list(argv)))
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(DEFAULTS)}")
    options = {**DEFAULTS, **given}
    options["aux"] = str(options["aux"])
    if options["aux"] != "all" and options["aux"] not in AUX_TARGETS:
        raise ValueError(f"unknown aux '{options['aux']}'; allowed values: {', '.join(AUX_TARGETS)}, all")
    for key in ("target", "max_count", "image_size", "dim", "seed"):
        if isinstance(options[key], bool) or not isinstance(options[key], int):
            raise ValueError(f"{key} must be an integer, got {options[key]!r}")
    return options


def main(argv: list[str] | None = None) -> int:
    """Print one partition line (or one per registered target for aux=all); return the exit code."""
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        kwargs = {key: options[key] for key in ("target", "max_count", "image_size", "dim", "seed")}
        if options["aux"] == "all":
            for name in AUX_TARGETS:
                print(f"{name}: {format_partition(predict_counting_partition(name, **kwargs))}")
        else:
            print(format_partition(predict_counting_partition(options["aux"], **kwargs)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
