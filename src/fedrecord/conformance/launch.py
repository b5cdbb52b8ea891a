"""Starting an implementation under test as spec/conformance.md says, and stopping it again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from fedrecord.core import cbor
from fedrecord.loopback import free_port

START_TIMEOUT = 60.0
STOP_GRACE = 10.0


class LaunchError(Exception):
    """The implementation did not start as the contract says."""


@contextlib.asynccontextmanager
async def launched(
    command: str, *, role: str, seed: bytes | None, log: Path | None = None
) -> AsyncIterator[str]:
    """Run ``command`` with the contract's environment; yield its base URL once ``/v0/health`` answers.

    Raises:
        LaunchError: the command exited, or its node did not answer as ``role`` within 60 s.
    """
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="fedrecord-conformance-"))
    env = {
        **os.environ,
        "FEDRECORD_CONFORMANCE_ROLE": role,
        "FEDRECORD_CONFORMANCE_PORT": str(port),
        "FEDRECORD_CONFORMANCE_DIR": str(state),
    }
    if seed is not None:
        env["FEDRECORD_CONFORMANCE_SEED"] = seed.hex()
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        command, shell=True, env=env, stdout=output, stderr=output, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(process, url, role)
        yield url
    finally:
        _stop(process)
        if log is not None:
            output.close()  # type: ignore[union-attr]
        shutil.rmtree(state, ignore_errors=True)


async def _wait_healthy(process: subprocess.Popen[bytes], url: str, role: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline:
            if process.poll() is not None:
                raise LaunchError(f"the {role} node's command exited with status {process.returncode}")
            try:
                async with session.get(f"{url}/v0/health") as response:
                    if response.status == 200:
                        health = cbor.decode(await response.read())
                        if type(health) is dict and health.get("role") == role:
                            return
                        raise LaunchError(f"{url}/v0/health does not answer role {role!r}: {health!r}")
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.1)
    raise LaunchError(f"the {role} node did not answer {url}/v0/health within {START_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
