"""``adapt models``: the listing is the registry (every ``FAMILIES`` key, in order, nothing else), each
entry as the catalog describes it, in text and as JSON, also from the installed command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from adapt.backbones import CATALOG, FAMILIES
from adapt.cli import main


def test_json_listing_is_the_registry_as_the_catalog_describes_it(capsys):
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["model_type"] for e in doc["families"]] == list(FAMILIES)
    for e in doc["families"]:
        info = CATALOG[e["model_type"]]
        assert e == {"model_type": e["model_type"], **json.loads(json.dumps(asdict(info)))}
        assert e["model_class"] == FAMILIES[e["model_type"]].model_class().__name__
        assert e["hub_ids"] and e["layout_kind"] and e["capturable"] and e["untested"]
    assert doc["embedded"]["backbone"] == "embedded" and doc["embedded"]["model_type"] in FAMILIES


def test_text_listing_has_one_block_per_family_and_nothing_else(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    blocks: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("  "):
            blocks[head].append(line.strip())
        else:
            head = line.split(":", 1)[0]
            blocks[head] = [line]
    assert list(blocks)[:-2] == list(FAMILIES)  # then the embedded model's line and how to load
    assert list(blocks)[-2] == "embedded"
    for model_type, info in CATALOG.items():
        assert blocks[model_type] == [
            f"{model_type}: {info.name}", f"classes:    {info.model_class} · {info.processor}",
            f"layout:     [{info.layout_kind}] {info.layout}", f"capturable: {info.capturable}",
            f"hub ids:    {', '.join(info.hub_ids)}", f"untested:   {info.untested}"]

def test_installed_command_lists_the_same(capsys):
    """The console script ``pip install -e .`` put beside this interpreter (``python -m adapt`` is ``main``)."""
    assert main(["models", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    script = shutil.which("adapt", path=str(Path(sys.executable).parent))
    assert script, "the installed adapt command is missing next to the interpreter"
    r = subprocess.run([script, "models", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout) == expected


def test_an_unknown_flag_is_one_line_exit_2(capsys):
    try:
        code = main(["models", "--family", "x"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unrecognized arguments" in err
