"""The cases, one module per part of the protocol; importing this package registers them all."""

from . import (  # noqa: F401
    basics,
    capabilities,
    documents,
    encoding,
    peer,
    signatures,
    sync,
)
