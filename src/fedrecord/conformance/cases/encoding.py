"""Cases: encoding (being written)."""
