"""The reference node, except that the time window (nbf, exp) of a grant chain's links is not checked."""

from _broken import edit, serve

from fedrecord.core import capabilities

edit(capabilities.decide, ("if now < grant.nbf:", "if False:"), ("if now >= grant.exp:", "if False:"))
serve()
