"""HTTP layer of a fedrecord node: signed node-to-node messages (spec/fedrecord.md, section 14).

``message_signatures`` is pure (method, target URI, header mapping and body
bytes in; headers or a verified result out; ``now`` is an argument) and is
the one place where RFC 9421 signatures of requests and answers are made and
checked.  ``aiohttp_signing`` adapts it to aiohttp clients and servers.
``event_stream`` is the (pure) framing of the event stream of section 15.14.
"""
