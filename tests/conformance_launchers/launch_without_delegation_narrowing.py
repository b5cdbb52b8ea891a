"""The reference node, except that a delegated grant wider than its parent is accepted ([CAP-6] not checked).

Chain shape, parent links and ``delegate`` on every parent are still checked.
"""

from _broken import replace, serve

from fedrecord.core import capabilities

replace(capabilities, "narrowing_problem", lambda child, parent: None)
serve()
