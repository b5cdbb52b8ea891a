"""One module per page; each declares its texts (``i18n.register``) and adds its routes here."""

from __future__ import annotations

from aiohttp import web

from . import record


def register_pages(app: web.Application) -> None:
    for page in (record,):
        page.routes(app)
