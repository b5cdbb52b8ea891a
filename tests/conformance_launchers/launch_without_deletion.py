"""The reference node, except that deleting a document leaves it in place, listed and fetchable.

The tombstone is still signed, stored and told to those who read the document;
the document's row, key and ciphertext are kept.
"""

from _broken import edit, serve

from fedrecord.node import patient

edit(
    patient.PatientNode.delete,
    ("await self._forget_document(doc)", "pass"),
    ("await self.home.destroyed(doc)", "pass"),
)
serve()
