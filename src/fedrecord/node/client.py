"""Signed requests from this node to a peer node, over aiohttp.

Every request carries an RFC 9421 signature by the node's key
(:mod:`fedrecord.http.message_signatures`).  Errors come back as the peer's
CBOR error body and are raised with the peer's code; a peer that cannot be
reached raises :class:`PeerUnreachable`, which the outbox retries.  So does an
answer that counts as no answer ([API-5]): a 5xx status, an error answer whose
body is not a readable error body, and an answer that fails [HTTP-13] when a
signed one was expected -- never taken for the peer's refusal.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict

from fedrecord.core import SigningIdentity
from fedrecord.core.errors import Code, FedrecordError, RemoteProtocolError
from fedrecord.http.aiohttp_signing import client_signing_headers, signed_target_uri
from fedrecord.http.event_stream import EVENT_STREAM_TYPE, EventStreamReader, ServerEvent
from fedrecord.http.message_signatures import verify_response

from .ranges import range_header
from .wire import CBOR_TYPE, MAX_BODY, decode_body, encode_body, error_fields, read_error

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=30)


class PeerUnreachable(Exception):
    """The peer did not answer (refused, timed out, connection cut), or its answer counts as none
    ([API-5]); worth retrying later.

    Attributes:
        url: what was asked.
        reason: why there is no answer, for people ("connection refused", "HTTP 503").
    """

    def __init__(self, url: object, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = str(url)
        self.reason = reason


def _no_answer(exc: BaseException) -> str:
    """Why a request got no answer, in a few words: the system's reason rather than aiohttp's class name."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its name was not found"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was refused ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed ({exc})"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno and exc.os_error.errno > 0:
        return os.strerror(exc.os_error.errno).lower()
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    return f"{exc.__class__.__name__}: {exc}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PeerClient:
    """Signed requests as one node; one aiohttp session for all peers."""

    def __init__(self, identity: SigningIdentity) -> None:
        self.identity = identity
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False)
        return self._session

    async def _stream_session(self) -> aiohttp.ClientSession:
        # Event streams hold their connections for as long as they last: in a pool of their own,
        # without the pool's usual cap, so that streams to many patients never starve the requests.
        if self._streams is None or self._streams.closed:
            self._streams = aiohttp.ClientSession(
                timeout=TIMEOUT, auto_decompress=False, connector=aiohttp.TCPConnector(limit=0)
            )
        return self._streams

    async def close(self) -> None:
        for session in (self._session, self._streams):
            if session is not None:
                await session.close()

    def _headers(
        self, method: str, url: str, body: bytes | None, extra: dict[str, str], *, streamed: bool = False
    ) -> CIMultiDict[str]:
        return client_signing_headers(
            identity=self.identity,
            method=method,
            url=url,
            body=body,
            now=int(time.time()),
            nonce=b64(os.urandom(16)),
            headers=extra,
            streamed=streamed,
        )

    async def call(
        self, method: str, url: str, *, expected_signer: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send a CBOR body, return the decoded CBOR answer.

        Args:
            expected_signer: the did of the node addressed; its answer (or
                refusal) must carry its signature bound to this request.

        Raises:
            PeerUnreachable: no answer.
            RemoteProtocolError: the peer's refusal, with its code, or
                ``bad-signature`` when the answer is not signed by ``expected_signer``.
        """
        body = encode_body(**fields)
        headers = self._headers(method, url, body, {"Content-Type": CBOR_TYPE})
        session = await self.session()
        try:
            async with session.request(method, url, data=body, headers=headers) as response:
                data = await _read_answer(response)
                status, answer_headers = response.status, dict(response.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(url, _no_answer(exc)) from None
        return _checked(method, url, headers, status, answer_headers, data, expected_signer)

    async def events(
        self, url: str, *, expected_signer: str, max_event: int, **fields: Any
    ) -> AsyncGenerator[ServerEvent, None]:
        """POST a signed CBOR body and read the answer as an event stream, one event at a time.

        The stream is not signed (spec [API-34]): what its events carry is
        verified by the caller.  A refusal is checked as :meth:`call` checks one.
        Close the generator (``contextlib.aclosing``) to close the connection
        as soon as you stop reading.

        Raises:
            PeerUnreachable: no answer, a 5xx, a cut connection, or nothing at
                all (not even a keep-alive) for ``TIMEOUT.sock_read`` seconds.
            RemoteProtocolError: the peer's refusal, with its code; ``malformed``
                for an answer that is not an event stream; the reader's codes
                (``too-large`` for an event over ``max_event`` bytes).
        """
        body = encode_body(**fields)
        headers = self._headers("POST", url, body, {"Content-Type": CBOR_TYPE, "Accept": EVENT_STREAM_TYPE})
        session = await self._stream_session()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    data = await _read_answer(response)
                    _checked(
                        "POST", url, headers, response.status, dict(response.headers), data, expected_signer
                    )
                if response.content_type != EVENT_STREAM_TYPE:
                    raise RemoteProtocolError(Code.MALFORMED, "the answer is not an event stream")
                reader = EventStreamReader(max_event=max_event)
                async for chunk in response.content.iter_any():
                    for event in reader.feed(chunk):
                        yield event
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(url, _no_answer(exc)) from None

    async def upload(
        self,
        url: str,
        chunks: AsyncIterable[bytes],
        headers: dict[str, str],
        *,
        progress: Progress | None = None,
        total: int | None = None,
        expected_signer: str | None = None,
    ) -> dict[str, Any]:
        """Stream a body (a ciphertext); it is authenticated by the records in ``headers``, not by a digest.

        The answer is checked as :meth:`call` checks one: an answer that is not
        signed by ``expected_signer`` and bound to this request is no answer
        ([HTTP-13]), so that nobody on the path can acknowledge a deposit.
        """
        signed_headers = self._headers(
            "PUT", url, None, {**headers, "Content-Type": "application/octet-stream"}, streamed=True
        )
        session = await self.session()
        try:
            async with session.put(
                url, data=counted(chunks, progress, total), headers=signed_headers
            ) as response:
                data = await _read_answer(response)
                status, answer_headers = response.status, dict(response.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(url, _no_answer(exc)) from None
        return _checked("PUT", url, signed_headers, status, answer_headers, data, expected_signer)

    async def download(
        self, url: str, *, start: int | None = None, expected_signer: str | None = None, **fields: Any
    ) -> Download:
        """POST a CBOR body and return the answer's status, headers and streamed body.

        The caller releases the answer (:meth:`Download.release`).

        Args:
            start: ask for the stream from this byte on (``Range: bytes=start-``,
                covered by the signature); the answer is then 206, or 200 from a
                node that serves whole streams only.
            expected_signer: the did of the node addressed: a refusal must be
                signed by it and bound to this request ([API-23], [HTTP-13]), else
                it is no answer.  A stream (200, 206) is not signed: the key wrap
                and the document id authenticate it.

        Raises:
            PeerUnreachable: no answer, or a 5xx one.
            RemoteProtocolError: the peer's refusal, with its code.

        Iterating the body raises :class:`PeerUnreachable` when the transfer is cut.
        """
        body = encode_body(**fields)
        extra = {"Content-Type": CBOR_TYPE, **(range_header(start) if start is not None else {})}
        headers = self._headers("POST", url, body, extra)
        session = await self.session()
        try:
            response = await session.post(url, data=body, headers=headers)
            if response.status >= 300:
                try:
                    data = await _read_answer(response)
                finally:
                    response.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(url, _no_answer(exc)) from None
        if response.status >= 300:
            _checked("POST", url, headers, response.status, dict(response.headers), data, expected_signer)
        return Download(response.status, response.headers, _cut_is_unreachable(url, response), response)


@dataclass(frozen=True)
class Download:
    """A streamed answer: its status, header fields and body, and the response to release."""

    status: int
    headers: Mapping[str, str]
    body: AsyncIterator[bytes]
    response: aiohttp.ClientResponse

    def release(self) -> None:
        self.response.release()


async def _cut_is_unreachable(url: str, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body in pieces of 64 KiB; a transfer cut short is no answer, worth resuming later."""
    try:
        async for chunk in response.content.iter_chunked(1 << 16):
            yield chunk
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PeerUnreachable(url, f"the transfer was cut ({_no_answer(exc)}); fetching again resumes it") from None


async def _read_answer(response: aiohttp.ClientResponse) -> bytes:
    # read(n) gives what has arrived, up to n: gather pieces until the end, refusing past the cap.
    data = bytearray()
    while piece := await response.content.read(MAX_BODY + 1 - len(data)):
        data += piece
        if len(data) > MAX_BODY:
            raise RemoteProtocolError(Code.TOO_LARGE, "the answer is over the cap")
    if response.content_length is not None and len(data) < response.content_length:
        # The connection closed mid-answer: no answer, as a dropped link (retry later).
        raise PeerUnreachable(response.url, "the answer was cut short")
    return bytes(data)


def _checked(
    method: str,
    url: str,
    headers: Mapping[str, str],
    status: int,
    answer_headers: Mapping[str, str],
    data: bytes,
    expected_signer: str | None,
) -> dict[str, Any]:
    """A CBOR answer's body, once its status and (when expected) its signature are checked.

    Raises:
        PeerUnreachable: a 5xx status; an answer that fails [HTTP-13] (unsigned, signed by
            another key, bound to another request, out of its window); an error answer
            whose body is not a readable error body ([API-5]).
        RemoteProtocolError: the peer's refusal for a 3xx or 4xx status; the decoding codes.
    """
    if status >= 500:
        # The peer's own trouble (an internal error, a busy database): retry later, never give up.
        raise PeerUnreachable(url, f"HTTP {status}")
    if expected_signer is not None:
        try:
            verify_response(
                expected_signer=expected_signer,
                status=status,
                headers=answer_headers,
                body=data,
                request_method=method,
                request_url=signed_target_uri(url)[2],
                request_headers=dict(headers),
                now=int(time.time()),
            )
        except FedrecordError as exc:
            # Anyone on the path can send an unsigned answer: it is no answer, never a refusal.  What
            # it claims is still said (its code only, never its text), as the likely cause: a node
            # refuses a request out of its time window without signing its answer.
            reason = f"the answer is not signed by the node asked ({exc.code.value})"
            fields = error_fields(data) if status >= 300 else None
            claimed = fields[0] if fields is not None else None
            if claimed is not None:
                reason += f"; unsigned, it says {claimed.value}"
            if exc.code in _CLOCK_CODES or claimed in _CLOCK_CODES:
                reason += f"; check that this machine's clock is right: {_CLOCK_WINDOW}"
            raise PeerUnreachable(url, reason) from None
    if status >= 300:
        raise _refusal(url, data, status)
    return decode_body(data)


_CLOCK_CODES: Final = (Code.EXPIRED, Code.NOT_YET_VALID)
_CLOCK_WINDOW: Final = "nodes take a signed request or answer for 60 seconds, and up to 30 seconds early"


def _refusal(url: str, data: bytes, status: int) -> RemoteProtocolError:
    """The peer's refusal in an error answer, to raise.

    Raises:
        PeerUnreachable: the body is not an error body at all ([API-5]: no answer).
    """
    fields = error_fields(data)
    if fields is None or fields[1] is None:
        raise PeerUnreachable(url, f"HTTP {status} without a readable error body")
    # A readable body with a code we do not know is still a refusal ([ERR-5]): read_error says so.
    return read_error(fields, status)


Progress = Callable[[int, int | None], None]
"""Told (bytes so far, total or None) as a transfer moves; the CLI draws a progress bar with it."""


async def counted(
    chunks: AsyncIterable[bytes], progress: Progress | None, total: int | None = None, *, done: int = 0
) -> AsyncIterator[bytes]:
    """``chunks`` as they are, telling ``progress`` the bytes so far (counted from ``done``)."""
    async for chunk in chunks:
        done += len(chunk)
        if progress is not None:
            progress(done, total)
        yield chunk


__all__ = ["Download", "PeerClient", "PeerUnreachable", "RemoteProtocolError", "b64", "unb64"]
