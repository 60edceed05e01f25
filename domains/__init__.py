"""The built-in domains, written in the absdsl DSL (``*.absd``), loaded by name.

This is the one registry of domain names: the loader, the training layer, the command line
and the public ``absdsl.BUILTIN_DOMAINS`` all read it.
"""

from __future__ import annotations

#: canonical name -> file, loosest (cheapest) first: the order of a "tightest" cascade
FILES: dict[str, str] = {
    "box": "box.absd",
    "hbox": "hbox.absd",
    "zonotope": "zonotope.absd",
    "crown-ibp": "crown-ibp.absd",
    "deeppoly": "deeppoly.absd",
}
#: other names of the same domains (the field's names for them)
ALIASES: dict[str, str] = {"ibp": "box", "deepz": "zonotope", "crown": "deeppoly",
                           "crownibp": "crown-ibp"}
NAMES: tuple[str, ...] = tuple(FILES)


def canonical(name: str) -> str | None:
    """The canonical built-in name of ``name`` (any case, aliases too), or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in FILES else None
