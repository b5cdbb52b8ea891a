"""XChaCha20-Poly1305 (IETF), called straight into the libsodium that PyNaCl ships.

Why not ``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt`` and ``_decrypt``: each call
there checks its arguments in Python and formats two error messages whether or not it raises them,
about 6 microseconds a call, twice the cost of sealing or opening a 1.5 KB chunk itself.  A sync of
small documents makes three such calls per document (the chunk opened and the key wrapped at rest by
the reader, the key unwrapped by the patient's node), which was a tenth of what the reader spent on
a document besides its signature.

The functions below call the same C functions of the same library, through the cffi module
``nacl._sodium`` that ``nacl.bindings`` itself is written over, with the checks libsodium cannot make
(a key and a nonce too short would be read past their end) and the same contract: bytes-like in,
bytes out, :class:`nacl.exceptions.CryptoError` when a ciphertext does not open, and the bindings'
``nacl.exceptions.TypeError`` or ``ValueError`` (both ``CryptoError`` too) for arguments of the
wrong type or size.  Should a PyNaCl release
move that module, the import falls back to ``nacl.bindings`` (same results, its cost);
``tests/test_xchacha.py`` holds both to the published vectors and to each other.
"""

from __future__ import annotations

from typing import Final

import nacl.bindings as sodium
from nacl import exceptions
from nacl.exceptions import CryptoError

__all__ = ["KEY_SIZE", "NONCE_SIZE", "TAG_SIZE", "encrypt", "decrypt"]

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 24
TAG_SIZE: Final = 16

try:
    from nacl._sodium import ffi, lib
except ImportError:  # pragma: no cover - a PyNaCl without its cffi module under this name
    ffi = lib = None


def _checked(data: bytes, what: str, size: int | None = None) -> bytes:
    # cffi takes only bytes for a "const unsigned char *"; libsodium reads a key and a nonce by their
    # fixed sizes, so a shorter one would be read past its end.
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise exceptions.TypeError(f"{what} must be bytes")
        data = bytes(data)
    if size is not None and len(data) != size:
        raise exceptions.ValueError(f"{what} must be {size} bytes")
    return data


def _encrypt_lib(message: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """``message`` sealed under ``key`` and ``nonce``, bound to ``aad``: ciphertext || 16-byte tag.

    Raises:
        nacl.exceptions.TypeError, nacl.exceptions.ValueError: for arguments that are not bytes-like,
            a key that is not 32 bytes or a nonce that is not 24.
    """
    message = _checked(message, "message")
    aad = _checked(aad, "associated data")
    nonce = _checked(nonce, "nonce", NONCE_SIZE)
    key = _checked(key, "key", KEY_SIZE)
    size = len(message) + TAG_SIZE
    out = ffi.new("unsigned char[]", size)
    lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, ffi.NULL, message, len(message), aad, len(aad), ffi.NULL, nonce, key
    )
    sealed: bytes = ffi.buffer(out, size)[:]
    return sealed


def _decrypt_lib(ciphertext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """The message ``ciphertext`` (ciphertext || tag) seals under ``key``, ``nonce`` and ``aad``.

    Raises:
        CryptoError: when the tag does not verify (or the ciphertext is shorter than a tag).
        TypeError, ValueError: as :func:`encrypt`.
    """
    ciphertext = _checked(ciphertext, "ciphertext")
    aad = _checked(aad, "associated data")
    nonce = _checked(nonce, "nonce", NONCE_SIZE)
    key = _checked(key, "key", KEY_SIZE)
    size = len(ciphertext) - TAG_SIZE
    if size < 0:
        raise CryptoError("Decryption failed.")
    out = ffi.new("unsigned char[]", max(size, 1))
    status = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, ffi.NULL, ffi.NULL, ciphertext, len(ciphertext), aad, len(aad), nonce, key
    )
    if status != 0:
        raise CryptoError("Decryption failed.")
    message: bytes = ffi.buffer(out, size)[:]
    return message


def _encrypt_bindings(message: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    result: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        _checked(message, "message"),
        _checked(aad, "associated data"),
        _checked(nonce, "nonce", NONCE_SIZE),
        _checked(key, "key", KEY_SIZE),
    )
    return result


def _decrypt_bindings(ciphertext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    ciphertext = _checked(ciphertext, "ciphertext")
    if len(ciphertext) < TAG_SIZE:
        # The bindings would raise ValueError (a negative length), not the refusal it is.
        raise CryptoError("Decryption failed.")
    result: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        ciphertext,
        _checked(aad, "associated data"),
        _checked(nonce, "nonce", NONCE_SIZE),
        _checked(key, "key", KEY_SIZE),
    )
    return result


DIRECT: Final = lib is not None
"""Whether the calls go straight to libsodium (else through ``nacl.bindings``)."""

encrypt = _encrypt_lib if DIRECT else _encrypt_bindings
decrypt = _decrypt_lib if DIRECT else _decrypt_bindings
