"""Facts about the P-JEPA presets: ``auto`` resolution, the composed preset values, bad names."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from experiments.training import apply_presets
from pjepa_ext.aux_targets import AUX_TARGETS, make_aux_target
from pjepa_ext.plugin import EXTENSION_LOSSES
from pjepa_ext.presets import SIZES, VARIANTS, resolve_aux, resolve_size, resolve_variant
from tdmpc2.config import flatten, to_container
from tdmpc2.gating import GradientGating

REPO = Path(__file__).resolve().parents[1]
PJEPA_VARIANTS = ("pjepa", "aux_only", "dyn_only")


def composed(*overrides):
    """Return the root config composed with ``overrides`` (no ``auto`` resolution)."""
    with initialize_config_dir(config_dir=str(REPO), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


# -- auto resolution ---------------------------------------------------------------


def test_variant_auto_follows_the_task():
    assert resolve_variant("auto", "counting") == "pjepa"
    assert resolve_variant("auto", "pendulum") == "stock"
    assert resolve_variant("dyn_only", "counting") == "dyn_only"
    assert resolve_variant("pjepa", "pendulum") == "pjepa"


@pytest.mark.parametrize("variant", PJEPA_VARIANTS)
def test_size_auto_follows_the_device_for_pjepa_variants_on_counting(variant):
    assert resolve_size("auto", variant, task="counting", cuda=False) == "cpu"
    assert resolve_size("auto", variant, task="counting", cuda=True) == "paper"
    assert resolve_size("auto", variant, task="pendulum", cuda=True) == "none"


@pytest.mark.parametrize("variant", PJEPA_VARIANTS)
def test_size_auto_is_none_on_pixel_tasks_other_than_counting(variant):
    # The presets are the counting experiment's scale (random data, 10 minutes, count probes).
    for cuda in (False, True):
        assert resolve_size("auto", variant, task="walker-walk", cuda=cuda) == "none"


@pytest.mark.parametrize("cuda", [False, True])
def test_size_auto_is_none_for_stock(cuda):
    assert resolve_size("auto", "stock", task="counting", cuda=cuda) == "none"


def test_explicit_size_wins_over_auto():
    for size in SIZES:
        assert resolve_size(size, "stock", task="pendulum", cuda=False) == size


def test_aux_auto_is_reward_for_pjepa_variants_and_none_for_stock():
    assert {v: resolve_aux("auto", v) for v in VARIANTS} == {
        "pjepa": "reward", "aux_only": "reward", "dyn_only": "reward", "stock": "none"}
    assert resolve_aux("random", "stock") == "random"


# -- unknown names ---------------------------------------------------------------------


def assert_lists(message: str, allowed) -> None:
    missing = [a for a in allowed if a not in message]
    assert not missing, f"error message {message!r} does not list {missing}"


@pytest.mark.parametrize("call, allowed", [
    (lambda: resolve_variant("bogus", "counting"), VARIANTS),
    (lambda: resolve_size("bogus", "pjepa", task="counting", cuda=False), SIZES),
    (lambda: resolve_aux("bogus", "pjepa"), tuple(AUX_TARGETS)),
    (lambda: make_aux_target("bogus", (3, 32, 32)), tuple(AUX_TARGETS)),
], ids=["variant", "size", "aux", "make_aux_target"])
def test_unknown_names_fail_listing_the_allowed_values(call, allowed):
    with pytest.raises(ValueError, match="'bogus'") as err:
        call()
    assert_lists(str(err.value), allowed)


def test_train_rejects_an_unknown_variant_listing_the_variants(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "train.py", "task=counting", "variant=bogus", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    seen = result.stdout + result.stderr
    assert "bogus" in seen
    assert_lists(seen, VARIANTS)
    assert not (tmp_path / "run").exists()


# -- preset values --------------------------------------------------------------------


@pytest.mark.parametrize("size", ["cpu", "paper", "none"])
def test_aux_only_learning_rate_wins_over_every_size(size):
    cfg = composed("task=counting", "variant=aux_only", f"size={size}")
    assert cfg.lr == 1e-5 and cfg.enc_lr_scale == 1.0  # the paper: 1e-5 for every component


def test_user_override_wins_over_the_variant():
    assert composed("task=counting", "variant=aux_only", "size=cpu", "lr=3e-4").lr == 3e-4


def test_pjepa_has_an_online_target_and_no_simnorm():
    cfg = composed("task=counting", "variant=pjepa", "size=cpu")
    assert cfg.consistency_target == "online"
    assert cfg.simnorm is False
    assert cfg.shift_pad == 0


def test_stock_is_tdmpc2():
    cfg = composed("task=counting", "variant=stock", "size=none")
    assert cfg.consistency_target == "detached"
    assert cfg.simnorm is True
    assert cfg.shift_pad == 3
    assert cfg.encoder == "default"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_table_is_valid_with_the_extension_rows(variant):
    cfg = composed("task=counting", f"variant={variant}")
    gating = GradientGating.from_config(dict(cfg.gating), cfg.consistency_target, EXTENSION_LOSSES)
    assert gating.reaches_encoder["policy"] is False
    assert gating.reaches_encoder["decoder"] is False


@pytest.mark.parametrize("size, width", [("cpu", 16), ("cpu64", 24), ("paper", 32)])
def test_size_presets_select_the_resnet(size, width):
    cfg = composed("task=counting", "variant=pjepa", f"size={size}")
    assert cfg.encoder == "resnet"
    assert cfg.resnet.width == width
    assert cfg.horizon == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_cpu64_is_the_cpu_preset_on_64x64_frames_with_a_wider_patch_stem_encoder(variant):
    cpu = flatten(to_container(composed("task=counting", f"variant={variant}", "size=cpu")))
    cpu64 = flatten(to_container(composed("task=counting", f"variant={variant}", "size=cpu64")))
    differences = {key: (cpu[key], cpu64[key]) for key in cpu if cpu[key] != cpu64[key]}
    assert set(cpu) == set(cpu64)
    expected = {"counting.image_size": (32, 64), "resnet.width": (16, 24), "resnet.stem_kernel": (7, 4),
                "resnet.stem_stride": (2, 4), "enc_lr_scale": (0.5, 0.3)}
    if variant == "aux_only":  # its own learning rates win over every size
        del expected["enc_lr_scale"]
    assert differences == expected


# -- apply_presets (what a real run does with `auto`) ------------------------------------


@pytest.fixture
def hydra_run():
    """Yield a function composing a config as @hydra.main would and applying ``apply_presets`` to it."""
    contexts = []

    def apply(*overrides):
        context = initialize_config_dir(config_dir=str(REPO), version_base=None)
        context.__enter__()
        contexts.append(context)
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return apply_presets(cfg)

    yield apply
    HydraConfig.instance().cfg = None
    for context in reversed(contexts):
        context.__exit__(None, None, None)


def test_auto_on_counting_applies_the_pjepa_cpu_presets(hydra_run):
    cfg = hydra_run("task=counting", "device=cpu", "resnet.width=8")
    assert (cfg.variant, cfg.size, cfg.aux) == ("pjepa", "cpu", "reward")
    assert cfg.counting.image_size == 32 and cfg.resnet.stem_pool is False  # from the cpu preset
    assert cfg.consistency_target == "online"
    assert cfg.encoder == "resnet"
    assert cfg.resnet.width == 8  # the user's override survives the re-composition
    assert cfg.resnet.blocks_per_stage == 1  # from the cpu preset


def test_auto_on_pendulum_is_stock_tdmpc2(hydra_run):
    cfg = hydra_run("task=pendulum", "device=cpu")
    assert (cfg.variant, cfg.size, cfg.aux) == ("stock", "none", "none")
    assert cfg.simnorm is True
    assert cfg.consistency_target == "detached"


def test_auto_size_with_an_explicit_variant(hydra_run):
    cfg = hydra_run("task=counting", "variant=aux_only", "device=cpu")
    assert (cfg.variant, cfg.size, cfg.aux) == ("aux_only", "cpu", "reward")
    assert cfg.lr == 1e-5


def test_a_bad_device_name_fails_with_the_allowed_devices(hydra_run):
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda, cuda:N"):
        hydra_run("task=counting", "device=gpu")
