"""The paper's Figure 2 experiment: its four variants, the claims it makes, and the report.

The paper (Sec. 2.3) trains P-JEPA on the counting task with four choices of
what reaches the encoder and states what each representation looks like.
:data:`VARIANTS` names the runs; :func:`evaluate_claims` checks each
statement against measured metrics with fixed rules (:data:`RULES`), and
:func:`report_markdown` writes the table and the verdicts.

Every claim is judged on one checkpoint's metrics: the caller evaluates it
at the best checkpoint (the paper plots "when the clusters are the most
compact") and at the final one, and reports both.
"""
from __future__ import annotations

from dataclasses import dataclass

#: name -> (train.py overrides, row label); the order of the figure's rows
VARIANTS = {
    "reward": (("variant=pjepa", "aux=reward"), "P-JEPA, reward auxiliary"),
    "random": (("variant=pjepa", "aux=random"), "P-JEPA, random 256-D auxiliary"),
    "reward_only": (("variant=aux_only", "aux=reward"), "reward loss only"),
    "dyn_only": (("variant=dyn_only", "aux=none"), "dynamics loss only"),
}

#: thresholds of the claims, fixed before any run (see :func:`evaluate_claims`)
RULES = {
    "nine_clusters_accuracy": 0.95,   # held-out nc accuracy for "nine clusters"
    "well_below_factor": 0.5,         # "well below": at most half of each other variant's ratio
    "near_one_ratio": 0.9,            # "ratio near 1": at least this
    "accuracy_gap": 0.2,              # "accuracy well below the reward run": by at least this
    "coarse_accuracy": 0.8,           # three-group (0-2/3-5/6-8) nc accuracy for "coarse groups"
    "collapsed_rank": 2.0,            # "effective rank near 1": at most this
    "collapsed_distance_factor": 0.05,  # "distances near 0": mean distance at most 5% of the others' smallest
}

#: metric columns of the per-variant table, in order
TABLE_COLUMNS = ("updates", "nc_accuracy", "distance_ratio", "effective_rank", "silhouette", "distinct_clusters",
                 "mean_distance", "latent_norm", "coarse_nc_accuracy", "decoder_mse", "predicted_classes",
                 "respects_lower_bound")


@dataclass(frozen=True)
class Claim:
    """One statement of the paper, whether the numbers support it, and the numbers."""

    name: str
    statement: str
    reproduced: bool | None  # None: a variant it needs is missing
    evidence: str


def metrics_row(metrics: dict) -> dict:
    """Return the flat table row of one run's ``metrics.json`` content (keys: :data:`TABLE_COLUMNS`)."""
    report = metrics["report"]
    return {
        "updates": metrics["checkpoint"]["updates"],
        **{k: report[k] for k in ("nc_accuracy", "distance_ratio", "effective_rank", "silhouette",
                                  "distinct_clusters", "mean_distance", "latent_norm")},
        "coarse_nc_accuracy": metrics["coarse_groups"]["nc_accuracy"],
        "decoder_mse": metrics["decoder"].get("mse"),
        "predicted_classes": metrics["theory"]["predicted_classes"],
        "respects_lower_bound": metrics["theory"]["respects_lower_bound"],
    }


def _missing(name: str, statement: str, needed: list[str], rows: dict) -> Claim | None:
    absent = [n for n in needed if n not in rows]
    if absent:
        return Claim(name, statement, None, f"not evaluated: no metrics for {', '.join(absent)}")
    return None


def evaluate_claims(rows: dict[str, dict]) -> list[Claim]:
    """Return the five claims of Sec. 2.3 judged on ``rows`` (variant name -> :func:`metrics_row`).

    - reward: nine clusters: nc accuracy >= 0.95, 9 distinct clusters, and a
      distance ratio at most half of every other variant's (those present);
    - random: no count structure: ratio >= 0.9 and accuracy at least 0.2 below the reward run's;
    - reward_only: coarse groups: fewer than 9 distinct clusters, three-group accuracy >= 0.8;
    - dyn_only: collapse: effective rank <= 2 and mean distance at most 5% of
      the smallest mean distance of the other variants;
    - decoder: MSE of the random run below the reward run's.
    """
    r = RULES
    claims = []

    statement = "reward auxiliary: nine clusters (accuracy >= 0.95, ratio well below the others)"
    others = [n for n in rows if n != "reward"]
    claim = _missing("reward_nine_clusters", statement, ["reward"], rows)
    if claim is None and not others:
        claim = Claim("reward_nine_clusters", statement, None, "not evaluated: no other variant to compare with")
    if claim is None:
        m = rows["reward"]
        ratios = {n: rows[n]["distance_ratio"] for n in others}
        ok = (m["nc_accuracy"] >= r["nine_clusters_accuracy"] and m["distinct_clusters"] == 9
              and all(m["distance_ratio"] <= r["well_below_factor"] * v for v in ratios.values()))
        claim = Claim("reward_nine_clusters", statement, ok,
                      f"accuracy {m['nc_accuracy']:.3f}, distinct clusters {m['distinct_clusters']}, ratio "
                      f"{m['distance_ratio']:.3f} vs " + ", ".join(f"{n} {v:.3f}" for n, v in ratios.items()))
    claims.append(claim)

    statement = "random auxiliary: no count structure (ratio near 1, accuracy well below the reward run)"
    claim = _missing("random_no_structure", statement, ["random", "reward"], rows)
    if claim is None:
        m, ref = rows["random"], rows["reward"]
        ok = (m["distance_ratio"] >= r["near_one_ratio"]
              and m["nc_accuracy"] <= ref["nc_accuracy"] - r["accuracy_gap"])
        claim = Claim("random_no_structure", statement, ok,
                      f"ratio {m['distance_ratio']:.3f}, accuracy {m['nc_accuracy']:.3f} "
                      f"(reward run {ref['nc_accuracy']:.3f})")
    claims.append(claim)

    statement = "reward loss only: coarse groups (0-2, 3-5, 6-8), not nine clusters"
    claim = _missing("reward_only_coarse", statement, ["reward_only"], rows)
    if claim is None:
        m = rows["reward_only"]
        ok = m["distinct_clusters"] < 9 and m["coarse_nc_accuracy"] >= r["coarse_accuracy"]
        claim = Claim("reward_only_coarse", statement, ok,
                      f"distinct clusters {m['distinct_clusters']}, three-group accuracy "
                      f"{m['coarse_nc_accuracy']:.3f}, nine-way accuracy {m['nc_accuracy']:.3f}")
    claims.append(claim)

    statement = "dynamics loss only: collapse (effective rank near 1, distances near 0)"
    claim = _missing("dyn_only_collapse", statement, ["dyn_only"], rows)
    if claim is None:
        m = rows["dyn_only"]
        other = [rows[n]["mean_distance"] for n in rows if n != "dyn_only"]
        scale = min(other) if other else None
        ok = m["effective_rank"] <= r["collapsed_rank"] and (
            scale is not None and m["mean_distance"] <= r["collapsed_distance_factor"] * scale)
        claim = Claim("dyn_only_collapse", statement, ok,
                      f"effective rank {m['effective_rank']:.3f}, mean distance {m['mean_distance']:.3g} "
                      f"(smallest of the other variants {scale if scale is None else format(scale, '.3g')}), "
                      f"latent norm {m['latent_norm']:.3g}")
    claims.append(claim)

    statement = "decoder error lower with the random auxiliary than with the reward auxiliary"
    claim = _missing("decoder_random_lower", statement, ["random", "reward"], rows)
    if claim is None:
        a, b = rows["random"]["decoder_mse"], rows["reward"]["decoder_mse"]
        if a is None or b is None:
            claim = Claim("decoder_random_lower", statement, None, "not evaluated: a run has no decoder probe")
        else:
            claim = Claim("decoder_random_lower", statement, a < b, f"decoder MSE random {a:.4g}, reward {b:.4g}")
    claims.append(claim)
    return claims


def _verdict(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[value]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Return ``rows`` (dicts) as a Markdown table with the given ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def claims_table(by_checkpoint: dict[str, list[Claim]]) -> str:
    """Return a Markdown table: one line per claim, a verdict and the numbers for each checkpoint."""
    names = list(by_checkpoint)
    first = by_checkpoint[names[0]]
    header = ["claim"] + [f"reproduced ({n})" for n in names] + [f"numbers ({n})" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, claim in enumerate(first):
        verdicts = [_verdict(by_checkpoint[n][i].reproduced) for n in names]
        evidence = [by_checkpoint[n][i].evidence for n in names]
        lines.append("| " + " | ".join([claim.statement, *verdicts, *evidence]) + " |")
    return "\n".join(lines)
