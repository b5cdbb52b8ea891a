"""The patient's web page, served by the patient's own node on 127.0.0.1 (US-2 to US-9, US-12).

Server-rendered: Jinja2 templates with autoescaping, plain HTML forms that
work without JavaScript, and a few lines of script for what forms cannot do
(copying an invitation code).  Why not a front end built in the project: the
page is a thin view over the node, every action is a form post that the node
checks (session, CSRF token) and answers with the next page, and there is no
build step to install or audit.

Modules: :mod:`.app` (the aiohttp application, middlewares, rendering),
:mod:`.auth` (the web credential, sessions, rate limit, CSRF), :mod:`.i18n`
(English and French), :mod:`.pages` (one module per page).
"""
