"""The reference node started as spec/conformance.md says: ``python -m fedrecord.conformance.reference``.

It reads the contract's environment (role, port, state directory and, for a
patient, the seed), creates a node there with ``fedrecord init`` and serves it
with ``fedrecord serve``: the same entry point a user runs.  The project's own
tests start deliberately broken nodes by patching one check and then calling
:func:`main` (tests/conformance_launchers/).
"""

from __future__ import annotations

import os
from pathlib import Path

PASSPHRASE = "conformance run, not a secret"


def main() -> None:
    """Create and serve the node the contract's environment describes; exits when the node stops."""
    from fedrecord.cli import main as fedrecord

    role = os.environ.get("FEDRECORD_CONFORMANCE_ROLE", "patient")
    port = os.environ["FEDRECORD_CONFORMANCE_PORT"]
    state = Path(os.environ["FEDRECORD_CONFORMANCE_DIR"])
    home = state / "node"
    # The key file's passphrase, unattended as a clinic node unlocks ([brief] 4.1); interactive
    # argon2id cost, since this node lives for one run.
    os.environ["FEDRECORD_PASSPHRASE"] = PASSPHRASE
    os.environ.setdefault("FEDRECORD_KDF", "interactive")
    init = ["--home", str(home), "init", "--role", role, "--name", f"Conformance {role}", "--port", port]
    seed = os.environ.get("FEDRECORD_CONFORMANCE_SEED")
    if seed:
        seed_file = state / "seed"
        seed_file.write_text(seed)
        seed_file.chmod(0o600)
        init += ["--signing-seed-file", str(seed_file)]
    if not (home / "node.key").exists():
        fedrecord(init, standalone_mode=False)
    fedrecord(["--home", str(home), "serve"], standalone_mode=False)


if __name__ == "__main__":
    main()
