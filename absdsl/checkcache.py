"""Which domain files have passed ``absdsl check``: a content hash per file, cached per user.

A domain is identified by the SHA-256 of its text and of every file it imports (recursively,
in import order), so an edit to the file or to anything it imports gives a new hash and an
old cache entry no longer applies. Certification (``training/certify.py``) certifies with a
domain that is not built in only when its hash is in the cache, or when the user marks the
results as coming from an unchecked domain.

The cache is a JSON file: ``$ABSDSL_CHECK_CACHE`` if set, else
``$XDG_CACHE_HOME/absdsl/checked.json``, else ``~/.cache/absdsl/checked.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from absdsl import domains as registry
from absdsl.dsl.parser import parse_source
from absdsl.errors import DSLError

ENV_VAR = "ABSDSL_CHECK_CACHE"
BUILTIN_FILES = registry.ALL_FILES  # every file shipped in absdsl/domains


def cache_path() -> Path:
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "absdsl" / "checked.json"


def domain_file(spec: str) -> Path:
    """The file of a domain argument (``path`` or ``path:Name``)."""
    if not Path(spec).exists() and ":" in spec:
        spec = spec.rsplit(":", 1)[0]
    return Path(spec)


def domain_digest(path: str | Path, _seen: frozenset[str] = frozenset()) -> str:
    """SHA-256 over the file's text and, recursively, the files it imports."""

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DSLError(f"cannot read domain file: {err.strerror}", filename=str(path)) from None
    h = hashlib.sha256()
    h.update(hashlib.sha256(data).digest())
    key = str(path.resolve())
    module = parse_source(data.decode("utf-8", errors="replace"), str(path))
    for target, pos in module.imports:
        dep = path.parent / target
        if str(dep.resolve()) in _seen | {key}:
            raise DSLError(f"import cycle through {target!r}", module.source, str(path),
                           pos.line, pos.column)
        h.update(target.encode())
        h.update(domain_digest(dep, _seen | {key}).encode())
    return h.hexdigest()


_BUILTIN_DIGESTS: dict[str, str] | None = None


def builtin_digests() -> dict[str, str]:
    """Hash -> file name of the built-in domain files shipped with absdsl."""
    global _BUILTIN_DIGESTS
    if _BUILTIN_DIGESTS is None:
        root = resources.files("absdsl.domains")
        _BUILTIN_DIGESTS = {domain_digest(Path(str(root.joinpath(name)))): name
                            for name in BUILTIN_FILES}
    return _BUILTIN_DIGESTS


def _read() -> dict[str, Any]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("checked") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def lookup(path: str | Path) -> dict[str, Any] | None:
    """The cache entry of the file as it is now (None if this exact content never passed)."""
    digest = domain_digest(path)
    entry = _read().get(digest)
    if isinstance(entry, dict) and entry.get("sha256") == digest:
        return entry
    return None


def record_pass(path: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Store that the file (this content) passed ``absdsl check`` with ``settings``."""
    digest = domain_digest(path)
    entries = _read()
    entry = {"sha256": digest, "file": str(Path(path).resolve()),
             "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "settings": settings}
    entries[digest] = entry
    target = cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".checked-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"checked": entries}, fh, indent=1)
    os.replace(tmp, target)
    return entry
