"""English and French: the language from a cookie set by the switch, else from the browser.

Every page module declares its texts next to its code as ``TEXT = {key:
(english, french)}``; :func:`catalog` gathers them.  A key missing from the
catalog renders as the key itself, which the tests look for.
"""

from __future__ import annotations

from collections.abc import Mapping

LANGUAGES = ("en", "fr")
DEFAULT = "en"
COOKIE = "fr_lang"

_CATALOG: dict[str, tuple[str, str]] = {}


def register(texts: Mapping[str, tuple[str, str]]) -> None:
    """Add a page's texts; a key may be declared once.

    Raises:
        ValueError: a key declared twice with other words.
    """
    for key, pair in texts.items():
        if key in _CATALOG and _CATALOG[key] != pair:
            raise ValueError(f"text {key!r} declared twice")
        _CATALOG[key] = pair


def catalog() -> dict[str, tuple[str, str]]:
    return dict(_CATALOG)


def choose(cookie: str | None, accept_language: str | None) -> str:
    """The language: the switch's cookie when valid, else the browser's first known preference."""
    if cookie in LANGUAGES:
        return str(cookie)
    preferences = []
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        preferences.append((quality, tag.strip().lower()[:2]))
    for _quality, tag in sorted(preferences, key=lambda p: -p[0]):
        if tag in LANGUAGES:
            return tag
    return DEFAULT


def translator(language: str):  # type: ignore[no-untyped-def]
    """``_(key, **values)`` for templates: the text in ``language``, with ``{name}`` fields filled."""
    index = LANGUAGES.index(language)

    def translate(key: str, **values: object) -> str:
        pair = _CATALOG.get(key)
        text = pair[index] if pair else key
        return text.format(**values) if values else text

    return translate
