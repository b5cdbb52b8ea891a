"""Cases: signatures (being written)."""
