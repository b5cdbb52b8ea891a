"""The reference node, except that revoked links of a grant chain are accepted (revocations are still stored)."""

from _broken import edit, serve

from fedrecord.core import capabilities

edit(capabilities.decide, ("if revokers.get(link.id, set()) & issuers:", "if False:"))
serve()
