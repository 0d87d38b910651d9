"""Files pamc writes: atomic writes and the cache folder, in one place.

Every file is written to a temporary name beside its target and moved into place with
`os.replace`, so a reader (another process, a resumed run) never sees a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import PamcError


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: `explicit`, else $PAMC_CACHE, else ~/.cache/pamc."""
    return Path(explicit or os.environ.get("PAMC_CACHE") or Path.home() / ".cache" / "pamc").expanduser()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then move the finished file to `path` (readable like a normal file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; pamc's files are plain data
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)

    atomic_write(path, write)


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict:
    """A YAML file holding a mapping, with one-line errors for a missing or malformed file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PamcError(f"{what} {path} not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PamcError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise PamcError(f"{what} {path} must hold a mapping of settings")
    return values


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
