"""The forms and links of a page's HTML, for tests that submit every form a page offers (no browser)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Form:
    action: str
    method: str
    #: The fields a browser would send by default: hidden and text inputs, checked boxes, selects' first or
    #: selected option, the submit button's name if it has one.
    fields: dict[str, str] = field(default_factory=dict)


class _Parser(HTMLParser):
    def __init__(self, page_path: str) -> None:
        super().__init__()
        self.page_path = page_path
        self.forms: list[Form] = []
        self.links: list[str] = []
        self._select: str | None = None
        self._select_value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        form = self.forms[-1] if self.forms else None
        if tag == "form":
            self.forms.append(Form(a.get("action") or self.page_path, (a.get("method") or "get").lower()))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif form is None:
            return
        elif tag == "input" and a.get("name"):
            kind = a.get("type", "text").lower()
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    form.fields[a["name"]] = a.get("value", "on")
            elif kind not in ("submit", "button", "file", "image", "reset"):
                form.fields[a["name"]] = a.get("value", "")
        elif tag == "select" and a.get("name"):
            self._select, self._select_value = a["name"], None
        elif tag == "option" and self._select is not None:
            value = a.get("value", "")
            if self._select_value is None or "selected" in a:
                self._select_value = value
                form.fields[self._select] = value
        elif tag == "textarea" and a.get("name"):
            form.fields[a["name"]] = ""
        elif tag == "button" and a.get("name") and a.get("type", "submit") == "submit":
            form.fields.setdefault(a["name"], a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def forms_of(html: str, page_path: str = "/") -> list[Form]:
    parser = _Parser(page_path)
    parser.feed(html)
    return parser.forms


def links_of(html: str) -> list[str]:
    parser = _Parser("/")
    parser.feed(html)
    return parser.links


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)
