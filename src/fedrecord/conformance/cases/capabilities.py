"""Cases: capabilities (being written)."""
