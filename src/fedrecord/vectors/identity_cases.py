"""Vectors for did:key identifiers (spec section 4, [ID-*])."""

from __future__ import annotations

from fedrecord.core import SigningIdentity
from fedrecord.core.identity import DID_KEY_PREFIX, _b58encode

from .format import VectorFile, fixed_seed

NOTES = {
    "Valid": {"bugType": "BASIC", "description": "A did:key for an Ed25519 key derived from a seed."},
    "Prefix": {"bugType": "MALFORMED", "description": "Not 'did:key:z' followed by base58btc ([ID-2])."},
    "Codec": {"bugType": "TYPE_CONFUSION", "description": "Multicodec other than Ed25519 0xed01 ([ID-2])."},
    "NonCanonical": {"bugType": "MALLEABILITY", "description": "Another spelling of the same key ([ID-2])."},
    "SmallOrder": {"bugType": "WEAK_PUBLIC_KEY", "description": "An Ed25519 key of small order ([ID-3])."},
}

SMALL_ORDER = [
    ("identity point", "01" + "00" * 31),
    ("order 4 point (zero)", "00" * 32),
    ("order 8 point", "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    ("order 2 point", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ("identity point with the sign bit set", "01" + "00" * 30 + "80"),
]


def build() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-did-key",
        header=[
            "did:key identifiers for Ed25519 (spec section 4): 'did:key:z' + base58btc(0xed 0x01 ||",
            "public key). Valid: the key pair from `seed` (RFC 8032) has public key `publicKey` and",
            "identifier `did`. Invalid: parsing `did` is refused with `error`.",
        ],
        notes=NOTES,
    )
    tests = file.group("DidKey", "Ed25519 did:key identifiers")
    for name in ("patient", "gp", "lab", "all-zero", "all-ff"):
        seed = {"all-zero": bytes(32), "all-ff": b"\xff" * 32}.get(name, fixed_seed(name))
        identity = SigningIdentity.from_seed(seed)
        file.case(
            tests,
            f"seed {name}",
            result="valid",
            flags=["Valid"],
            seed=seed.hex(),
            publicKey=identity.public_key.hex(),
            did=identity.did,
        )
    good = SigningIdentity.from_seed(fixed_seed("patient")).did
    raw = good[len(DID_KEY_PREFIX) :]
    for comment, did, flag in (
        ("did:key with a base64url multibase prefix", "did:key:u" + raw, "Prefix"),
        ("did:web instead of did:key", "did:web:" + raw, "Prefix"),
        ("character outside the base58 alphabet", DID_KEY_PREFIX + "0" + raw[1:], "Prefix"),
        ("one character short", good[:-1], "Prefix"),
        (
            "X25519 key-agreement multicodec",
            DID_KEY_PREFIX + _b58encode(b"\xec\x01" + bytes(range(1, 33))),
            "Codec",
        ),
        ("secp256k1 multicodec", DID_KEY_PREFIX + _b58encode(b"\xe7\x01" + bytes(range(1, 34))), "Codec"),
        ("leading '1' (a zero byte) added", DID_KEY_PREFIX + "1" + raw, "NonCanonical"),
        ("uppercase prefix", "DID:KEY:z" + raw, "Prefix"),
    ):
        file.case(tests, comment, result="invalid", flags=[flag], error="bad-key", did=did)
    for comment, key in SMALL_ORDER:
        file.case(
            tests,
            f"small-order key: {comment}",
            result="invalid",
            flags=["SmallOrder"],
            error="bad-key",
            did=DID_KEY_PREFIX + _b58encode(b"\xed\x01" + bytes.fromhex(key)),
        )
    return file
