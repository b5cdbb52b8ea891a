"""Benchmarks of STREAM document encryption: throughput against one-shot AEAD, and peak memory.

Imported by the main benchmark script (``sys.path.insert(0, benchmarks_dir)``
then ``import stream_bench``); also runnable on its own::

    python benchmarks/stream_bench.py [size_for_ratio [size_for_rss]]

Key, prefix and data are fixed bytes: nothing here needs to be secret and
fixed inputs make runs comparable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["stream_crypto_ratio", "stream_peak_rss_mib"]

_PIECE_SIZE = 2**20
_ROUNDS = 3
_SRC_DIR = Path(__file__).resolve().parent.parent / "src"


def _ensure_importable() -> None:
    # The main script runs from a checkout where the package may not be installed.
    if _SRC_DIR.is_dir() and str(_SRC_DIR) not in sys.path:
        sys.path.insert(0, str(_SRC_DIR))


def _best_of(rounds: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def stream_crypto_ratio(size: int = 64 * 2**20) -> dict[str, Any]:
    """Compare streaming encrypt+decrypt with one-shot XChaCha20-Poly1305 on ``size`` bytes.

    The one-shot side seals the whole buffer under a single nonce with
    ``nacl.bindings`` directly; the streaming side feeds the same data as
    1 MiB pieces through :class:`StreamEncryptor` piped into
    :class:`StreamDecryptor` (so it also pays for the document id, twice).
    Each side is timed best of three with ``time.perf_counter``.

    Returns:
        ``stream_crypto_ratio`` (streaming throughput / one-shot throughput,
        target >= 0.8), ``oneshot_mb_s`` and ``stream_mb_s`` (MB = 10**6 bytes
        of plaintext per second, encrypt and decrypt together) and ``size``.
    """
    _ensure_importable()
    import nacl.bindings as sodium

    from fedrecord.core.stream import PREFIX_SIZE, StreamDecryptor, StreamEncryptor

    key = bytes(range(32))
    prefix = bytes(PREFIX_SIZE)
    nonce = bytes(24)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    view = memoryview(data)

    def one_shot() -> None:
        sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(data, None, nonce, key)
        if len(sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, None, nonce, key)) != size:
            raise AssertionError("one-shot round trip lost bytes")

    def pieces() -> Iterator[memoryview]:
        for start in range(0, size, _PIECE_SIZE):
            yield view[start : start + _PIECE_SIZE]

    def streaming() -> None:
        encryptor = StreamEncryptor(key, prefix)
        decryptor = StreamDecryptor(key)
        total = 0
        for plaintext in decryptor.decrypt(encryptor.encrypt(pieces())):
            total += len(plaintext)
        if total != size or decryptor.document_id != encryptor.document_id:
            raise AssertionError("streaming round trip lost bytes")

    one_shot_seconds = _best_of(_ROUNDS, one_shot)
    stream_seconds = _best_of(_ROUNDS, streaming)
    oneshot_mb_s = size / one_shot_seconds / 1e6
    stream_mb_s = size / stream_seconds / 1e6
    return {
        "stream_crypto_ratio": stream_mb_s / oneshot_mb_s,
        "oneshot_mb_s": oneshot_mb_s,
        "stream_mb_s": stream_mb_s,
        "size": size,
    }


# Runs in a fresh interpreter so the peak is this pipeline's alone.  On Linux the
# peak is VmHWM after resetting it at the baseline (VmRSS); elsewhere ru_maxrss
# (KiB on Linux, bytes on macOS).
_RSS_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from fedrecord.core.stream import PREFIX_SIZE, StreamDecryptor, StreamEncryptor

    size, piece_size = int(sys.argv[1]), int(sys.argv[2])
    unit = 1 if sys.platform == "darwin" else 1024
    block = bytes(range(256)) * (piece_size // 256)

    def document():
        left = size
        while left > 0:
            yield block if left >= piece_size else block[:left]
            left -= piece_size

    def status_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    try:
        # Linux: reset the high-water mark so the peak is measured from the
        # current resident size, not from whatever the imports touched.
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        baseline, unit, peak_of = status_kib("VmRSS"), 1024, lambda: status_kib("VmHWM")
    except OSError:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    key, prefix = bytes(range(32)), bytes(PREFIX_SIZE)
    encryptor, decryptor = StreamEncryptor(key, prefix), StreamDecryptor(key)
    total = 0
    for plaintext in decryptor.decrypt(encryptor.encrypt(document())):
        total += len(plaintext)
    assert total == size and decryptor.document_id == encryptor.document_id
    peak = peak_of()
    print(json.dumps({"stream_peak_rss_mib": (peak - baseline) * unit / 2**20}))
    """
)


def stream_peak_rss_mib(size: int = 2**30) -> dict[str, Any]:
    """Peak resident memory added by streaming a ``size``-byte document through encrypt and decrypt.

    A fresh child interpreter imports :mod:`fedrecord.core.stream`, prepares a
    1 MiB source block and takes ``ru_maxrss`` as the baseline; it then encrypts
    a lazily generated document (1 MiB pieces), pipes the ciphertext chunks
    straight into a decryptor and discards the plaintext.

    Returns:
        ``stream_peak_rss_mib``: peak ``ru_maxrss`` minus the baseline, in MiB
        (target < 64 for 1 GiB).

    Raises:
        subprocess.CalledProcessError: when the child fails.
    """
    env = dict(os.environ)
    if _SRC_DIR.is_dir():
        # The child must import the same checkout as the parent.
        inherited = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(_SRC_DIR) + (os.pathsep + inherited if inherited else "")
    result = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(size), str(_PIECE_SIZE)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


if __name__ == "__main__":
    if any(not argument.isdigit() for argument in sys.argv[1:3]):
        raise SystemExit(__doc__)
    ratio_size = int(sys.argv[1]) if len(sys.argv) > 1 else 64 * 2**20
    rss_size = int(sys.argv[2]) if len(sys.argv) > 2 else 2**30
    print(json.dumps({**stream_crypto_ratio(ratio_size), **stream_peak_rss_mib(rss_size)}, indent=2))
