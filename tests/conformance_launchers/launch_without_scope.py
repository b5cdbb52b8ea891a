"""The reference node, except that the scopes of a grant chain are not checked: every document is in scope."""

from _broken import replace, serve

from fedrecord.core import capabilities

replace(capabilities, "scope_matches", lambda scope, document, issued_at: True)
serve()
