"""One pinned install: requirements/lock-cpu.txt pins every dependency of pyproject.toml at a version its
specifier allows, and it is exactly what this venv holds (scripts/setup.sh installs with it as
constraints): nothing pinned is missing or at another version, nothing installed is unpinned."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK = REPO_ROOT / "requirements" / "lock-cpu.txt"


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"not an exact pin: {line!r}"
            assert canonicalize_name(name) not in pins, f"pinned twice: {name}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _project_requirements() -> list[Requirement]:
    """What the CPU lock covers: the dependencies and the test extra (setup.sh installs ``.[test]``)."""
    project = _project()
    return [Requirement(req) for req in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def test_gpu_only_extras_pin_exact_versions():
    """Extras the CPU lock cannot hold (``fp8``: torchao, for Hopper GPUs) pin their own exact version."""
    gpu_extras = {name: group for name, group in _project()["optional-dependencies"].items() if name != "test"}
    assert "fp8" in gpu_extras
    for group in gpu_extras.values():
        for req in map(Requirement, group):
            assert [spec.operator for spec in req.specifier] == ["=="], f"{req} is not an exact pin"


def test_lock_pins_every_pyproject_dependency_within_its_specifier():
    pins = _pins()
    requirements = _project_requirements()
    assert len(requirements) > 15
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{LOCK.name}: {req.name}=={pins[name]} violates {req}"


UNPINNED = {"pip", "setuptools", "wheel", "flux-encode-once"}
"""What ``pip freeze`` (scripts/lock.sh) leaves out: pip's own tools, and this project (editable)."""


def test_this_venv_holds_the_locked_versions():
    """Both directions: every pinned package is installed at its pin (local labels aside: 2.13.0+cpu),
    and every installed distribution but ``UNPINNED`` is pinned."""
    pins = _pins()
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in importlib.metadata.distributions()}
    drift = {name: (str(version), str(installed.get(name))) for name, version in pins.items()
             if name not in installed or installed[name].public != str(version)}
    assert drift == {}, f"(locked, installed): {drift}; run bash scripts/setup.sh"
    unpinned = sorted(set(installed) - set(pins) - UNPINNED)
    assert unpinned == [], f"installed but not pinned in {LOCK.name}: {unpinned}; run bash scripts/lock.sh"
