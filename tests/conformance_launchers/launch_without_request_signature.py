"""The reference node, except that the Ed25519 signature of an HTTP request (RFC 9421) is not checked.

The Signature fields are still parsed, the window, key id, components and
Content-Digest still checked, and the nonce still remembered; response
signatures the node verifies as a client are still checked.
"""

from _broken import edit, serve

from fedrecord.http import message_signatures

edit(
    message_signatures._verify_base,
    (
        "    verify_ed25519(public_key, base, parsed.signature)",
        "    if isinstance(view, _Response):\n        verify_ed25519(public_key, base, parsed.signature)",
    ),
)
serve()
