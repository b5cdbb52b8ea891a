"""fedrecord: patients keep control of their own health records.

The protocol core lives in :mod:`fedrecord.core` (pure, no I/O); nodes, the
CLI and the patient's web page are adapters around it.
"""

__version__ = "0.1.0"
