"""requirements/lock.txt, which `make` installs with --no-deps, must satisfy pyproject.toml."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_every_declared_dependency_is_pinned_at_a_version_it_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    pins = _pins()
    problems = []
    for spec in declared:
        req = Requirement(spec)
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} does not meet {req.specifier}")
    assert not problems, "; ".join(problems) + " (run `make lock`)"


def test_lock_pins_each_package_once_and_leaves_out_triton():
    lines = [
        canonicalize_name(line.split("==")[0])
        for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(lines) == len(set(lines))
    assert "triton" not in lines and "effnets" not in lines
    assert _pins()["torch"] == "2.14.1" and _pins()["torchvision"] == "0.29.1"
