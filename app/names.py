"""How server-side paths are shown to users: relative to what they gave, never the server's layout."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shown_path(p) -> str:
    """A folder of the repository as a relative path (``runs/jobs``), anything else as given."""
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except (ValueError, OSError):
        return str(p)


def model_name(name: str) -> str:
    """A backbone as a visitor may see it: hub ids and repository folders as typed, another local
    folder by its own name (its parent folders are the server's business)."""
    name = str(name)
    path = Path(name).expanduser()
    local = name.startswith((".", "/", "~")) or (path.exists() and not name.count("/") == 1)
    if not local:
        return name
    shown = shown_path(path)
    return shown if not Path(shown).is_absolute() else path.name or name


def scrub(text: str, *folders) -> str:
    """``text`` (an error message) without the server folders ``folders`` in it."""
    text = str(text)
    for folder in folders:
        if folder:
            for form in {str(folder), str(Path(folder).resolve())}:
                text = text.replace(form.rstrip("/") + "/", "").replace(form, ".")
    return text
