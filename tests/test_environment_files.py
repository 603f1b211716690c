"""The install files agree: environment.yml pins what pyproject.toml pins (conda itself cannot be run here), and
the test extra installs everything the tests use, dm_control included, so that no test is skipped for want of it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tdmpc2.extras import EXTRAS

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    """Return pyproject.toml's ``[project]`` table."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def combined(lines, own_name: str) -> dict[str, SpecifierSet]:
    """Return package -> the intersection of every pin given for it in ``lines``, leaving out this project itself."""
    out: dict[str, SpecifierSet] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name != own_name:
            out[name] = out.get(name, SpecifierSet()) & req.specifier
    return out


def pyproject_pins() -> dict[str, SpecifierSet]:
    """Return every package of pyproject.toml (dependencies and all extras) with its combined pins."""
    project = pyproject()
    lines = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return combined(lines, canonicalize_name(project["name"]))


def environment() -> tuple[list[str], list[str]]:
    """Return environment.yml's ``(conda dependencies, pip dependencies)``."""
    deps = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return conda, pip


def test_environment_yml_lists_the_packages_and_pins_of_pyproject_toml():
    _, pip = environment()
    listed = [canonicalize_name(Requirement(line).name) for line in pip]
    assert len(listed) == len(set(listed)), "environment.yml lists a package twice"
    env = combined(pip, canonicalize_name(pyproject()["name"]))
    ours = pyproject_pins()
    assert sorted(env) == sorted(ours), (f"only in environment.yml: {sorted(set(env) - set(ours))}; "
                                         f"only in pyproject.toml: {sorted(set(ours) - set(env))}")
    differ = {name: (str(env[name]), str(ours[name])) for name in ours if env[name] != ours[name]}
    assert not differ, f"pins differ (environment.yml, pyproject.toml): {differ}"


def test_torch_is_pinned_exactly_in_both():
    _, pip = environment()
    assert "torch==2.13.0" in pip and "torch==2.13.0" in pyproject()["dependencies"]


def test_environment_python_satisfies_requires_python():
    conda, _ = environment()
    python = next(d for d in conda if d.startswith("python="))
    assert SpecifierSet(pyproject()["requires-python"]).contains(python.split("=", 1)[1] + ".0")


def test_the_test_extra_pulls_dm_control_and_the_comparison():
    test = [Requirement(r) for r in pyproject()["optional-dependencies"]["test"]]
    own = next(r for r in test if canonicalize_name(r.name) == canonicalize_name(pyproject()["name"]))
    assert {"dmc", "compare", "wandb", "tensorboard", "video"} <= own.extras


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_the_extras_check_names_what_pyproject_installs(extra):
    installed = {canonicalize_name(Requirement(r).name) for r in pyproject()["optional-dependencies"][extra]}
    for _, distribution in EXTRAS[extra]:
        assert canonicalize_name(distribution) in installed


@pytest.mark.parametrize("module", ["dm_control", "mujoco", "rliable", "hydra_plugins.hydra_joblib_launcher",
                                    "hydra_plugins.hydra_submitit_launcher"])
def test_the_test_setup_installed(module):
    assert importlib.util.find_spec(module) is not None, (
        f"{module} is missing: the tests need everything of the test extra (pip install -e \".[test]\")")
