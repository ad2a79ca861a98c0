"""``pip install -e .`` and a plain ``pip install .`` give an ``adapt`` command that runs the embedded
model from any folder (the plain install finds the shipped models where pyproject.toml's data-files put
them). Each install goes into a fresh venv that borrows this environment's packages through a
``.pth`` file, so nothing is downloaded."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OK_PNG = ROOT / "tests" / "data" / "cli-bad" / "ok.png"


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # appended after the venv's own site-packages: the installed adapt comes first, torch & co. from here
    (site / "zz-borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _install(venv: Path, *args: str) -> None:
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--no-build-isolation", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def _run(venv: Path, where: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """The installed ``adapt`` command, run from ``where`` with only the venv on PATH."""
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "ADAPT_CACHE": str(tmp_path / "cache")}
    return subprocess.run(["adapt", *argv], cwd=where, env=env, capture_output=True, text=True, timeout=300)


def _answers(venv: Path, tmp_path: Path) -> str:
    """Answer with the embedded model from a folder outside the checkout; returns where the model was."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    r = _run(venv, where, tmp_path, "run", "--image", str(OK_PNG), "--question", "describe the image", "--out", "out",
             "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (where / "out" / "trace.zip").exists()
    return r.stdout.split("backbone: ", 1)[1].split(" (llava)")[0]


@pytest.mark.slow
def test_editable_install_runs_from_another_folder(tmp_path):
    venv = _venv(tmp_path)
    _install(venv, "-e", str(ROOT))
    assert _answers(venv, tmp_path) == str(ROOT / "assets" / "embedded")
    r = _run(venv, tmp_path, tmp_path, "eval", "--limit", "0", "--out", "e")
    assert r.returncode == 2 and r.stderr.startswith("adapt eval: error: argument --limit")  # named as it is called


@pytest.mark.slow
def test_plain_install_carries_the_shipped_models(tmp_path):
    # built from a copy: an in-tree build would leave build/ in the checkout
    src = tmp_path / "src"
    (src / "assets").mkdir(parents=True)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for d in ("adapt", "app", "assets/embedded", "assets/embedded-vagdpo", "assets/examples"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    venv = _venv(tmp_path)
    _install(venv, str(src))
    shutil.rmtree(src)  # nothing may point back at the source: the models come from the install
    shipped = venv / "share" / "adapt" / "assets"
    assert _answers(venv, tmp_path) == str(shipped / "embedded")
    assert (shipped / "examples" / "presets.json").exists() and (shipped / "embedded-vagdpo" / "config.json").exists()
