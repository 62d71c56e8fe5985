"""The Binder and conda environment agrees with the tested package versions."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _environment_pins(path: Path) -> dict[str, str]:
    environment = yaml.safe_load(path.read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    pins = {}
    for requirement in pip_section:
        name, version = requirement.split("==")
        pins[_normalise(name)] = version
    return pins


def _constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.strip().split("==")
            pins[_normalise(name)] = version
    return pins


def test_binder_copy_identical():
    assert (ROOT / "binder" / "environment.yml").read_text() == (ROOT / "environment.yml").read_text()


def test_environment_pins_match_constraints():
    constraints = _constraint_pins()
    for name, version in _environment_pins(ROOT / "environment.yml").items():
        assert constraints.get(name) == version, name


def test_environment_covers_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["app"]
    pins = _environment_pins(ROOT / "environment.yml")
    for requirement in requirements:
        name = _normalise(re.split(r"[<>=!~\[ ]", requirement)[0])
        assert name in pins, name


def test_environment_python_version():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in environment["dependencies"]


def test_binder_installs_project():
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post_build


def test_binder_and_make_cull_idle_kernels():
    import json

    config = json.loads((ROOT / "binder" / "jupyter_server_config.json").read_text())["MappingKernelManager"]
    makefile = (ROOT / "Makefile").read_text()
    post_build = (ROOT / "binder" / "postBuild").read_text()

    assert config == {"cull_idle_timeout": 120, "cull_interval": 60}
    assert "CULL_IDLE_SECONDS ?= 120" in makefile
    assert "--MappingKernelManager.cull_idle_timeout=$(CULL_IDLE_SECONDS)" in makefile
    assert "--MappingKernelManager.cull_interval=60" in makefile
    assert "$(CULL_FLAGS)" in makefile.split("\napp:")[1].split("\n\n")[0]
    assert "binder/jupyter_server_config.json" in post_build
