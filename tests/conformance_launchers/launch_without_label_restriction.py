"""The reference node, except that the patient's private restrictions hide nothing (they are still stored)."""

from _broken import replace, serve

from fedrecord.core import capabilities

replace(capabilities, "_restriction_hides", lambda restriction, chain_ids, requester, document: False)
serve()
