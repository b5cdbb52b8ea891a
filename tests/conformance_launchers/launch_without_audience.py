"""The reference node, except that the leaf grant's audience is not compared with the requester."""

from _broken import edit, serve

from fedrecord.core import capabilities

edit(capabilities.decide, ("if leaf.record.audience != requester:", "if False:"))
serve()
