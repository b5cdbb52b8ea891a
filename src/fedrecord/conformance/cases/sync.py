"""Cases: sync (being written)."""
