"""HTTP as the suite speaks it: every request built by hand, so that any part of it can be wrong on purpose.

The suite uses the reference implementation's sans-I/O pieces (CBOR, records,
RFC 9421 signing) to *build* messages, never its node code to *judge* them:
what the target answers is checked against the spec by the cases themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from fedrecord.core import SigningIdentity, cbor
from fedrecord.core.errors import FedrecordError
from fedrecord.http.aiohttp_signing import client_signing_headers, signed_target_uri
from fedrecord.http.message_signatures import verify_response
from fedrecord.node.client import b64, unb64

from .registry import Failed

CBOR_TYPE = "application/cbor"
TIMEOUT = aiohttp.ClientTimeout(total=60, connect=5, sock_read=30)


def body(**fields: Any) -> bytes:
    """A request body of protocol version 0: the strict encoding of ``{"v": 0, **fields}``."""
    return cbor.encode({"v": 0, **fields})


@dataclass
class Answer:
    """What the target answered: status, header fields, the whole body, and the request it answers."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    request_method: str = ""
    request_url: str = ""
    request_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def data(self) -> dict[str, Any]:
        """The body as a CBOR map.

        Raises:
            Failed: the body is not a strict CBOR map.
        """
        try:
            decoded = cbor.decode(self.body, max_size=1 << 20)
        except FedrecordError as exc:
            raise Failed(f"HTTP {self.status}: the body is not strict CBOR ({exc.code.value})") from None
        if type(decoded) is not dict:
            raise Failed(f"HTTP {self.status}: the body is not a CBOR map")
        return decoded

    @property
    def code(self) -> str | None:
        """The error code of an error body, or None when the body is not one."""
        try:
            decoded = cbor.decode(self.body, max_size=1 << 20)
        except FedrecordError:
            return None
        if type(decoded) is dict and type(decoded.get("code")) is str and type(decoded.get("message")) is str:
            return str(decoded["code"])
        return None

    def signed_by(self, did: str) -> bool:
        """Whether the answer carries a valid signature by ``did`` bound to its request ([HTTP-12], [HTTP-13])."""
        try:
            verify_response(
                expected_signer=did,
                status=self.status,
                headers=dict(self.headers),
                body=self.body,
                request_method=self.request_method,
                request_url=signed_target_uri(self.request_url)[2],
                request_headers=dict(self.request_headers),
                now=int(time.time()),
            )
        except FedrecordError:
            return False
        return True

    def describe(self) -> str:
        code = self.code
        return f"HTTP {self.status}" + (f" {code}" if code else "")


Tamper = Callable[[CIMultiDict[str]], None]


class Wire:
    """Requests to one node under test, at its base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def url(self, path: str) -> str:
        return self.base_url + path

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No decompression and no cookie jar: the suite sees the answer exactly as sent.
            self._session = aiohttp.ClientSession(
                timeout=TIMEOUT, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def signed_headers(
        self,
        signer: SigningIdentity,
        method: str,
        path: str,
        data: bytes | None,
        *,
        headers: Mapping[str, str] | None = None,
        now: int | None = None,
        nonce: str | None = None,
        streamed: bool = False,
        lifetime: int = 60,
    ) -> CIMultiDict[str]:
        """The header fields of a request signed by ``signer`` as Section 14 says."""
        return client_signing_headers(
            identity=signer,
            method=method,
            url=self.url(path),
            body=data,
            now=int(time.time()) if now is None else now,
            nonce=nonce or b64(os.urandom(16)),
            headers=headers or {},
            streamed=streamed,
            lifetime=lifetime,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | CIMultiDict[str] | None = None,
    ) -> Answer:
        """Send a request as given (signed or not) and read the whole answer.

        Raises:
            Failed: the target did not answer (connection refused or cut, timeout).
        """
        session = await self.session()
        url = self.url(path)
        sent = CIMultiDict(headers or {})
        try:
            async with session.request(
                method, URL(url, encoded=True), data=data, headers=sent, skip_auto_headers=("Content-Type",)
            ) as response:
                answer = await response.read()
                return Answer(response.status, response.headers, answer, method, url, dict(sent))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Failed(f"{method} {path}: no answer ({exc.__class__.__name__}: {exc})") from None

    async def get(self, path: str) -> Answer:
        return await self.request("GET", path)

    async def call(
        self,
        path: str,
        signer: SigningIdentity | None,
        fields: Mapping[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        method: str = "POST",
        extra: Mapping[str, str] | None = None,
        tamper: Tamper | None = None,
        now: int | None = None,
        nonce: str | None = None,
        lifetime: int = 60,
    ) -> Answer:
        """A CBOR request: ``fields`` (with ``v``: 0 added) or ``raw`` bytes, signed by ``signer`` (None: unsigned).

        ``tamper`` edits the signed header fields before sending (a forged or
        stripped signature, a changed digest).
        """
        data = raw if raw is not None else body(**(fields or {}))
        headers = {"Content-Type": CBOR_TYPE, **(extra or {})}
        sent: CIMultiDict[str]
        if signer is None:
            sent = CIMultiDict(headers)
        else:
            sent = self.signed_headers(
                signer, method, path, data, headers=headers, now=now, nonce=nonce, lifetime=lifetime
            )
        if tamper is not None:
            tamper(sent)
        return await self.request(method, path, data=data, headers=sent)

    async def resend(self, answer: Answer, data: bytes) -> Answer:
        """Send the request that ``answer`` answered again, byte for byte (a replay)."""
        path = answer.request_url[len(self.base_url) :]
        return await self.request(answer.request_method, path, data=data, headers=answer.request_headers)


async def raw_exchange(
    host: str,
    port: int,
    request: bytes,
    *,
    pause_after: int | None = None,
    pause: float = 0.0,
    read_timeout: float = 30,
) -> bytes:
    """Write ``request`` on a fresh TCP connection (optionally pausing part-way) and read until the node closes.

    For what aiohttp's client will not send: slow bodies, bodies shorter or
    longer than announced.  Returns everything the node wrote (possibly nothing).
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if pause_after is None:
            writer.write(request)
        else:
            writer.write(request[:pause_after])
            await writer.drain()
            await asyncio.sleep(pause)
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(request[pause_after:])
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        chunks = []
        try:
            async with asyncio.timeout(read_timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
                    if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                        break
        except (TimeoutError, ConnectionError, OSError):
            pass
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds an HTTP answer head and all of its Content-Length body."""
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip() or 0)
    return False


def status_of(raw: bytes) -> int | None:
    """The status code of a raw HTTP answer, or None when there is none."""
    if not raw.startswith(b"HTTP/1."):
        return None
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


__all__ = [
    "CBOR_TYPE",
    "Answer",
    "Tamper",
    "Wire",
    "b64",
    "body",
    "body_of",
    "raw_exchange",
    "status_of",
    "unb64",
]
