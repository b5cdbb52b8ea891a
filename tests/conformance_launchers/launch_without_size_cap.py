"""The reference node, except that CBOR request bodies over 1 MiB are read and decoded (no [API-3] cap).

Document streams keep their own cap; the node's own client keeps its cap on answers.
"""

import functools

from _broken import replace, serve

from fedrecord.node import server

UNCAPPED = 1 << 40

server.read_capped.__defaults__ = (UNCAPPED,)
replace(server, "decode_body", functools.partial(server.decode_body, max_size=UNCAPPED))
serve()
