"""Representation metrics during training: every ``analysis_freq`` updates, on fixed probe sets.

Writes a row to ``analysis.csv`` and keeps the checkpoint at the best held-out
nearest-centroid accuracy as ``best.pt`` (the paper plots at the most compact point).
"""
from __future__ import annotations

import torch

from pjepa_ext.metrics import representation_report
from pjepa_ext.probes import embed, run_probe_sets
from tdmpc2.checkpoint import save_checkpoint


class AnalysisHook:
    """Computes the representation report on the probe sets and tracks the best checkpoint."""

    def __init__(self, cfg):
        self.freq = cfg.analysis_freq
        self.target = cfg.counting.target
        self.centroid_set, self.eval_set = run_probe_sets(cfg)
        self.best_accuracy = -1.0

    def measure(self, agent) -> dict[str, float]:
        """Return the representation report of ``agent``'s encoder, plus the auxiliary head's reading of the target count."""
        was_training = agent.model.training
        agent.train(False)
        encode, device = agent.model.encode, agent.device
        z_c = embed(encode, self.centroid_set.obs, device)
        z_e = embed(encode, self.eval_set.obs, device)
        report = representation_report(z_c, self.centroid_set.counts, z_e, self.eval_set.counts)
        aux = [t for t in agent.extra_losses if t.name == "auxiliary"]
        if aux and aux[0].target.name == "reward":
            with torch.no_grad():
                pred = aux[0].predict(torch.as_tensor(z_e, device=device)).squeeze(-1).cpu().numpy()
            at_target = self.eval_set.counts == self.target
            report["aux_pred_target"] = float(pred[at_target].mean())
            report["aux_pred_other"] = float(pred[~at_target].mean())
        agent.train(was_training)
        return report

    def _record(self, trainer) -> None:
        report = self.measure(trainer.agent)
        row = {"updates": trainer.agent.num_updates, "step": trainer.step, **report, "elapsed": trainer.elapsed}
        trainer.logger.log("analysis", row)
        if report["nc_accuracy"] > self.best_accuracy:
            self.best_accuracy = report["nc_accuracy"]
            payload = trainer.checkpoint_payload()
            payload["analysis"] = row
            save_checkpoint(trainer.run_dir / "best.pt", payload)

    def state_dict(self) -> dict:
        """Return the best held-out accuracy so far (the score behind ``best.pt``), for a resumed run."""
        return {"best_accuracy": self.best_accuracy}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` output."""
        self.best_accuracy = float(state["best_accuracy"])

    def on_update(self, trainer) -> None:
        """Measure at the first update and every ``analysis_freq`` updates."""
        n = trainer.agent.num_updates
        if n == 1 or n % self.freq == 0:
            self._record(trainer)

    def on_end(self, trainer) -> None:
        """Measure once more at the end unless this update was just measured."""
        n = trainer.agent.num_updates
        if n > 1 and n % self.freq:
            self._record(trainer)


def build_hooks(cfg) -> list:
    """Return the training hooks for ``cfg``: the analysis hook on the counting task when ``analysis_freq > 0``."""
    if cfg.analysis_freq and cfg.task == "counting":
        return [AnalysisHook(cfg)]
    return []
