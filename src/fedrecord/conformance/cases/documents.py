"""Cases: documents (being written)."""
