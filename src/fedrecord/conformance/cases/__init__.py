"""The cases, one module per part of the protocol; importing this package registers them all."""

from . import (  # noqa: F401
    basics,
    capabilities,
    clinic,
    documents,
    encoding,
    peer,
    signatures,
    sync,
)
