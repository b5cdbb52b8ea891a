"""The web page's aiohttp application: middlewares, rendering, sign-in and the page modules' routes.

Every page but sign-in needs a session; every form post needs the session's
CSRF token and, when the browser sends one, an ``Origin`` of this page.
Answers carry a strict Content-Security-Policy (no inline script, nothing
from elsewhere), ``no-store`` caching and no referrer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from fedrecord.node.home import NodeHome
from fedrecord.node.patient import PatientNode

from . import i18n
from .auth import COOKIE, CredentialError, Session, Sessions, password_matches, same_token
from .sentences import iso_day

HERE = Path(__file__).parent
HOME = web.AppKey("home", NodeHome)
PATIENT = web.AppKey("patient", PatientNode)
SESSIONS = web.AppKey("sessions", Sessions)
#: One password check at a time (each is an argon2id hash in a worker thread).
CHECKING = web.AppKey("checking", asyncio.Semaphore)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
SESSION = web.RequestKey("session", Session)
LANGUAGE = web.RequestKey("language", str)
OPEN_PATHS = ("/signin", "/static/", "/language")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

i18n.register(
    {
        "app.name": ("My health record", "Mon dossier de santé"),
        "nav.label": ("Main menu", "Menu principal"),
        "nav.record": ("My record", "Mon dossier"),
        "nav.inbox": ("Inbox", "Boîte de réception"),
        "nav.sharing": ("Sharing", "Partage"),
        "nav.audit": ("Who looked", "Qui a consulté"),
        "nav.connect": ("Connect a clinic", "Connecter un cabinet"),
        "nav.devices": ("My devices", "Mes appareils"),
        "skip": ("Skip to the content", "Aller au contenu"),
        "signout": ("Sign out", "Se déconnecter"),
        "language.label": ("Language", "Langue"),
        "language.switch": ("Change", "Changer"),
        "signin.title": ("Sign in", "Connexion"),
        "signin.password": ("Password", "Mot de passe"),
        "signin.submit": ("Sign in", "Se connecter"),
        "signin.wrong": ("Wrong password.", "Mot de passe incorrect."),
        "signin.wait": (
            "Too many wrong passwords. Try again in {minutes} minutes.",
            "Trop de mots de passe incorrects. Réessayez dans {minutes} minutes.",
        ),
        "signin.unset": (
            "No password is set for this page yet. On the node, run: fedrecord web-password",
            "Aucun mot de passe n'est encore défini pour cette page. Sur le nœud, lancez : fedrecord web-password",
        ),
        "signin.ended": (
            "You were signed out: after 15 minutes without activity, after 12 hours, or because the "
            "password was changed. Please sign in again.",
            "Vous avez été déconnecté : après 15 minutes d'inactivité, après 12 heures, ou parce que le "
            "mot de passe a changé. Reconnectez-vous.",
        ),
        "csrf.refused": (
            "This form has expired. Please go back, reload the page and try again.",
            "Ce formulaire a expiré. Revenez en arrière, rechargez la page et réessayez.",
        ),
        "form.unreadable": (
            "This form could not be read. Please go back, reload the page and try again.",
            "Ce formulaire n'a pas pu être lu. Revenez en arrière, rechargez la page et réessayez.",
        ),
        "host.refused": (
            "This page answers only at an IP address, localhost or the name set as web_host.",
            "Cette page ne répond qu'à une adresse IP, à localhost ou au nom choisi comme web_host.",
        ),
        "error.title": ("Something went wrong", "Un problème est survenu"),
        "error.back": ("Back to my record", "Retour à mon dossier"),
    }
)


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION]
    return session


def language_of(request: web.Request) -> str:
    """This request's language, as the language middleware chose it."""
    return str(request.get(LANGUAGE, i18n.DEFAULT))


def notify(request: web.Request, key: str, **values: object) -> None:
    """Show a message on the next page."""
    session_of(request).notices.append((key, values))


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """The page ``template`` in the request's language, with the layout's context."""
    language = language_of(request)
    session: Session | None = request.get(SESSION)
    translate = i18n.translator(language)
    notices = []
    if session is not None:
        notices = [translate(key, **values) for key, values in session.notices]
        session.notices.clear()
    page = request.app[TEMPLATES].get_template(template)
    html = page.render(
        _=translate,
        lang=language,
        csrf=session.csrf if session else "",
        signed_in=session is not None,
        path=request.path,
        here=request.path_qs,
        notices=notices,
        **context,
    )
    return web.Response(status=status, text=html, content_type="text/html", charset="utf-8")


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:  # redirects and aiohttp's own 404/405 answers get the headers too
        _secure(exc)
        raise
    _secure(response)
    return response


def _secure(response: web.StreamResponse) -> None:
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Not "no-referrer": under it Chromium sends ``Origin: null`` with a form post, which the Origin
    # check below refuses.  "same-origin" still sends nothing to any other site.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def own_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve only requests addressed to this page by a name no other site can hold.

    A page on another site can rebind its own host name to 127.0.0.1 (DNS rebinding); its requests
    then reach this page with that name in ``Host`` and, since the browser deems them same-origin,
    in ``Origin`` too, which the CSRF check compares with ``Host``.  An IP address cannot be
    rebound, nor ``localhost``, nor the name the patient configured (``web_host``); any port is
    fine, so that a tunnel or a forwarded port (``ssh -L 9000:127.0.0.1:8471``) still works.
    """
    if not _names_this_page(request):
        return render(request, "refused.html", status=421, message_key="host.refused")
    return await handler(request)


def _names_this_page(request: web.Request) -> bool:
    try:
        name = (URL(f"http://{request.headers.get(hdrs.HOST, '')}").host or "").strip("[]").lower()
    except ValueError:
        return False
    if name in ("localhost", request.app[HOME].config.web_host.lower()):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@web.middleware
async def language(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[LANGUAGE] = i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("Accept-Language"))
    return await handler(request)


@web.middleware
async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pages need a session; a form post needs its CSRF token (and this page as its Origin)."""
    session = request.app[SESSIONS].find(request.cookies.get(COOKIE))
    if session is not None:
        request[SESSION] = session
    if request.method == "POST" and not _same_origin(request):
        # Every post, sign-in and language switch included: another site the patient visits must not
        # post here (a guessed password trips the rate limit and would lock the patient out).
        return render(request, "refused.html", status=403, message_key="csrf.refused")
    if request.method == "POST" and (session is not None or request.path.startswith(OPEN_PATHS)):
        # Read here, once (aiohttp keeps it for the handler): a form that does not parse -- a
        # multipart body without its boundary, an unknown charset -- is refused, not a 500.
        try:
            await request.post()
        except (ValueError, LookupError, HttpProcessingError):
            return render(request, "refused.html", status=400, message_key="form.unreadable")
    if request.path.startswith(OPEN_PATHS):
        return await handler(request)
    if session is None:
        ended = "?ended=1" if request.cookies.get(COOKIE) else ""
        if request.method == "GET":
            raise redirect(f"/signin{ended}")
        return render(request, "refused.html", status=401, message_key="signin.ended")
    if request.method == "POST":
        form = await request.post()
        if not same_token(str(form.get("csrf", "")), session.csrf):
            return render(request, "refused.html", status=403, message_key="csrf.refused")
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    """A post from this page: its ``Origin`` (when the browser sends one) is ours, and it is not cross-site."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


#: Where the language switch may send the browser back to: a path of this page, with its query.
LOCAL_PATH = re.compile(r"/(?![/\\])[^\s\x00-\x1f\x7f]*")


def local_path(target: str, default: str = "/record") -> str:
    """``target`` when it is a path of this page (never ``//host``, ``/\\host`` or with control characters)."""
    return target if LOCAL_PATH.fullmatch(target) else default


async def signin_page(request: web.Request) -> web.Response:
    if SESSION in request:
        raise redirect("/record")
    return render(request, "signin.html", ended="ended" in request.query)


async def signin(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    client = request.remote or "unknown"
    # The form is read before the limit is checked, and the attempt counted before any other wait:
    # parallel attempts cannot all pass the check while their bodies arrive.
    form = await request.post()
    wait = sessions.wait_seconds(client)
    if wait:
        return render(request, "signin.html", status=429, error=("signin.wait", {"minutes": (wait + 59) // 60}))
    sessions.failed(client)
    try:
        # argon2id takes a fraction of a second of CPU: off the event loop that also serves the API,
        # one at a time.
        async with request.app[CHECKING]:
            ok = await asyncio.to_thread(password_matches, request.app[HOME].path, str(form.get("password", "")))
    except CredentialError:
        return render(request, "signin.html", status=503, error=("signin.unset", {}))
    if not ok:
        return render(request, "signin.html", status=401, error=("signin.wrong", {}))
    sessions.succeeded(client)
    sessions.end(request.cookies.get(COOKIE))  # a fresh token at each sign-in (no fixation)
    session = sessions.start()
    response = redirect("/record")
    response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict", path="/")
    raise response


async def signout(request: web.Request) -> web.Response:
    request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response = redirect("/signin")
    response.del_cookie(COOKIE, path="/")
    raise response


async def switch_language(request: web.Request) -> web.Response:
    form = await request.post()
    chosen = str(form.get("lang", ""))
    response = redirect(local_path(str(form.get("back", "/record"))))
    if chosen in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, chosen, samesite="Strict", path="/", max_age=365 * 86_400)
    raise response


async def root(request: web.Request) -> web.Response:
    raise redirect("/record")


def make_web_app(home: NodeHome, patient: PatientNode, *, sessions: Sessions | None = None) -> web.Application:
    """The patient's web page over ``patient``, the node's own :class:`PatientNode` (one per process)."""
    from .pages import register_pages

    app = web.Application(middlewares=[headers, own_host, language, signed_in], client_max_size=64 << 10)
    app[HOME] = home
    app[PATIENT] = patient
    app[SESSIONS] = sessions or Sessions(home=home.path)
    app[CHECKING] = asyncio.Semaphore(1)
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    app[TEMPLATES].filters["date"] = iso_day
    app[TEMPLATES].filters["hex"] = lambda b: b.hex()
    app.router.add_get("/", root)
    app.router.add_get("/signin", signin_page)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
    app.router.add_post("/language", switch_language)
    app.router.add_static("/static/", HERE / "static")
    register_pages(app)
    return app
