"""``pip install .`` gives a package that imports: pyproject.toml declares what adapt/ and app/ import,
and the pins of requirements.txt satisfy those declarations."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports() -> set[str]:
    mods = set()
    for path in list((ROOT / "adapt").rglob("*.py")) + list((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("adapt", "app", "__future__")}


def test_dependencies_cover_every_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from importlib.metadata import requires

    declared = {_name(r) for r in project["dependencies"]}
    # a declared package's own requirements come with it (gradio brings gradio_client)
    declared |= {_name(r) for d in list(declared) for r in (requires(d) or []) if "extra ==" not in r}
    # an optional extra's own adapter (adapt/integrations/) imports it: it need not be installed
    optional = {_name(r) for extra in project.get("optional-dependencies", {}).values() for r in extra}
    dists = packages_distributions()
    missing = {}
    for mod in _third_party_imports() - {m for m in _third_party_imports() if m.replace("_", "-") in optional}:
        provided = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        assert provided, f"{mod} is imported but installed by no distribution"
        if not provided & declared:
            missing[mod] = sorted(provided)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_requirement_pins_satisfy_the_declared_ranges():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r): Requirement(r) for r in project["dependencies"]}
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = version
    assert set(declared) == set(pins)
    for name, req in declared.items():
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {req.specifier}"
