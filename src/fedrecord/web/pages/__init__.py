"""One module per page; each declares its texts (``i18n.register``) and adds its routes here."""

from __future__ import annotations

from aiohttp import web

from . import audit, connect, devices, document_actions, inbox, record, sharing


def register_pages(app: web.Application) -> None:
    for page in (record, connect, devices, inbox, sharing, document_actions, audit):
        page.routes(app)
