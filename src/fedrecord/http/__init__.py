"""HTTP layer of a fedrecord node: signed node-to-node messages (spec/http-signatures.md).

``message_signatures`` is pure (method, target URI, header mapping and body
bytes in; headers or a verified result out; ``now`` is an argument) and is
the one place where RFC 9421 signatures of requests and answers are made and
checked.  ``aiohttp_signing`` adapts it to aiohttp clients and servers.
"""
