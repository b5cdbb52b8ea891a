"""Vectors for strict deterministic CBOR decoding (spec section 3, [CBOR-*])."""

from __future__ import annotations

from fedrecord.core import cbor

from .format import VectorFile, diag

NOTES = {
    "Canonical": {"bugType": "BASIC", "description": "A valid item in core deterministic encoding."},
    "SizeCap": {"bugType": "EDGE_CASE", "description": "Input longer than the size cap ([CBOR-1])."},
    "Malformed": {"bugType": "MALFORMED", "description": "Not well-formed CBOR ([CBOR-2])."},
    "TrailingBytes": {"bugType": "MALFORMED", "description": "Bytes after the single item ([CBOR-3])."},
    "IndefiniteLength": {"bugType": "CAN_OF_WORMS", "description": "Indefinite-length item ([CBOR-4])."},
    "NonShortest": {"bugType": "MALLEABILITY", "description": "Argument not in shortest form ([CBOR-5])."},
    "KeyOrder": {"bugType": "MALLEABILITY", "description": "Map keys not in bytewise order ([CBOR-5])."},
    "DuplicateKey": {"bugType": "CAN_OF_WORMS", "description": "The same map key twice ([CBOR-6])."},
    "TooDeep": {"bugType": "EDGE_CASE", "description": "Nesting deeper than 16 ([CBOR-7])."},
    "ForbiddenTag": {
        "bugType": "CAN_OF_WORMS",
        "description": "A tag the protocol does not name ([CBOR-8]).",
    },
    "UnsupportedType": {
        "bugType": "CAN_OF_WORMS",
        "description": "Float, undefined or a simple value other than false, true, null ([CBOR-9]).",
    },
    "InvalidMapKey": {
        "bugType": "CAN_OF_WORMS",
        "description": "A map key that is not a text string ([CBOR-10]).",
    },
    "InvalidUtf8": {"bugType": "MALFORMED", "description": "A text string that is not UTF-8 ([CBOR-11])."},
}

_NESTED_16 = "81" * 15 + "80"
_NESTED_17 = "81" * 16 + "80"

VALID = [
    ("00", "zero"),
    ("17", "largest immediate integer"),
    ("1818", "smallest one-byte argument"),
    ("19ffff", "largest two-byte argument"),
    ("1a00010000", "smallest four-byte argument"),
    ("1b0000000100000000", "smallest eight-byte argument"),
    ("1bffffffffffffffff", "largest unsigned integer"),
    ("20", "minus one"),
    ("3bffffffffffffffff", "smallest negative integer"),
    ("40", "empty byte string"),
    ("4401020304", "byte string"),
    ("60", "empty text string"),
    ("62c3bc", "text string with a two-byte UTF-8 character"),
    ("80", "empty array"),
    ("a0", "empty map"),
    ("a2616101626262820203", "map with keys in length-first order"),
    ("a3616101616202616303", "map with keys of one length in bytewise order"),
    ("a2617a0162616101", "shorter key first although it sorts later as text"),
    ("83f4f5f6", "false, true and null"),
    (_NESTED_16, "sixteen nested arrays"),
]

INVALID = [
    ("18", "malformed", "Malformed", "one-byte argument missing"),
    ("6261", "malformed", "Malformed", "text string shorter than its length"),
    ("8201", "malformed", "Malformed", "array shorter than its count"),
    ("1c", "malformed", "Malformed", "reserved additional information 28"),
    ("ff", "malformed", "Malformed", "break outside an indefinite-length item"),
    ("1f", "malformed", "Malformed", "indefinite marker on an integer"),
    ("", "malformed", "Malformed", "empty input"),
    ("0000", "trailing-bytes", "TrailingBytes", "two items"),
    ("a0ff", "trailing-bytes", "TrailingBytes", "a break byte after the item"),
    ("5f4101ff", "indefinite-length", "IndefiniteLength", "indefinite-length byte string"),
    ("7f6161ff", "indefinite-length", "IndefiniteLength", "indefinite-length text string"),
    ("9fff", "indefinite-length", "IndefiniteLength", "indefinite-length array"),
    ("bfff", "indefinite-length", "IndefiniteLength", "indefinite-length map"),
    ("1817", "non-canonical", "NonShortest", "23 in a one-byte argument"),
    ("190017", "non-canonical", "NonShortest", "23 in a two-byte argument"),
    ("1a0000ffff", "non-canonical", "NonShortest", "65535 in a four-byte argument"),
    ("1b00000000ffffffff", "non-canonical", "NonShortest", "2**32-1 in an eight-byte argument"),
    ("3817", "non-canonical", "NonShortest", "-24 in a one-byte argument"),
    ("5800", "non-canonical", "NonShortest", "empty byte string with a one-byte length"),
    ("980100", "non-canonical", "NonShortest", "array count in a one-byte argument"),
    ("a262626201616102", "non-canonical", "KeyOrder", "longer key first"),
    ("a2616201616102", "non-canonical", "KeyOrder", "keys of one length in descending order"),
    ("a2616101616102", "duplicate-key", "DuplicateKey", 'the key "a" twice'),
    ("a3616101616202616103", "duplicate-key", "DuplicateKey", "a repeated key after another key"),
    (_NESTED_17, "too-deep", "TooDeep", "seventeen nested arrays"),
    ("c11a514b67b0", "forbidden-tag", "ForbiddenTag", "tag 1 (epoch time)"),
    ("c249010000000000000000", "forbidden-tag", "ForbiddenTag", "tag 2 (bignum)"),
    ("d818450102030405", "forbidden-tag", "ForbiddenTag", "tag 24 (embedded CBOR)"),
    ("d28440a04040", "forbidden-tag", "ForbiddenTag", "tag 18 outside a COSE_Sign1 position"),
    ("d9d9f700", "forbidden-tag", "ForbiddenTag", "tag 55799 (self-described CBOR)"),
    ("f90000", "unsupported-type", "UnsupportedType", "half-precision float"),
    ("fa3f800000", "unsupported-type", "UnsupportedType", "single-precision float"),
    ("fb3ff0000000000000", "unsupported-type", "UnsupportedType", "double-precision float"),
    ("f7", "unsupported-type", "UnsupportedType", "undefined"),
    ("e0", "unsupported-type", "UnsupportedType", "simple value 0"),
    ("f820", "unsupported-type", "UnsupportedType", "simple value 32"),
    ("a10100", "invalid-map-key", "InvalidMapKey", "integer map key"),
    ("a14000", "invalid-map-key", "InvalidMapKey", "byte string map key"),
    ("a1f400", "invalid-map-key", "InvalidMapKey", "boolean map key"),
    ("62c328", "invalid-utf8", "InvalidUtf8", "truncated two-byte character"),
    ("61ff", "invalid-utf8", "InvalidUtf8", "byte 0xff in text"),
    ("63eda080", "invalid-utf8", "InvalidUtf8", "UTF-16 surrogate encoded in UTF-8"),
]


def build() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-strict-cbor",
        header=[
            "Strict decoding of untrusted CBOR as spec section 3 defines it.",
            "Decode `input` (hex) with a size cap of `maxSize` bytes, COSE tag 18 not allowed, text map",
            "keys. A valid case decodes to `diag`; an invalid case is refused with the code `error`,",
            "the first rule broken in the order of the algorithm of section 3.2 ([CBOR-13]).",
        ],
        notes=NOTES,
    )
    tests = file.group("CborStrictDecode", "strict decoding of one item", maxSize=cbor.MAX_RECORD_SIZE)
    for hex_input, comment in VALID:
        value = cbor.decode(bytes.fromhex(hex_input))
        file.case(tests, comment, result="valid", flags=["Canonical"], input=hex_input, diag=diag(value))
    for hex_input, code, flag, comment in INVALID:
        file.case(tests, comment, result="invalid", flags=[flag], error=code, input=hex_input)
    capped = file.group("CborStrictDecode", "the size cap is checked before parsing", maxSize=16)
    file.case(
        capped,
        "seventeen bytes with a cap of sixteen",
        result="invalid",
        flags=["SizeCap"],
        error="too-large",
        input="50" + "00" * 16,
    )
    file.case(
        capped,
        "even malformed input is refused for its size first",
        result="invalid",
        flags=["SizeCap"],
        error="too-large",
        input="ff" * 17,
    )
    file.case(
        capped,
        "sixteen bytes with a cap of sixteen",
        result="valid",
        flags=["Canonical"],
        input="4f" + "00" * 15,
        diag="h'" + "00" * 15 + "'",
    )
    return file
