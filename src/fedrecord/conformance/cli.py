"""``fedrecord-conformance``: point the suite at a node and read what it got wrong."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import click

from .coverage import coverage
from .launch import LaunchError, launched
from .registry import Failed, all_cases, select
from .reports import report_data, summary, write_json, write_junit
from .runner import Result, run_cases
from .session import Session


def _tags(value: str | None) -> set[str]:
    return {t.strip() for t in (value or "").split(",") if t.strip()}


def _seed(text: str | None, option: str = "--patient-seed") -> bytes | None:
    if text is None:
        return None
    try:
        seed = bytes.fromhex(text.strip())
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise click.BadParameter("a seed is 32 bytes written as 64 hex digits", param_hint=option)
    return seed


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", metavar="URL", help="Base URL of the patient node under test, already running.")
@click.option(
    "--launch",
    metavar="CMD",
    help="Start the patient node under test with this command (spec/conformance.md).",
)
@click.option(
    "--peer", metavar="URL", help="Base URL of a clinic node under test, for the mixed-federation cases."
)
@click.option("--launch-peer", metavar="CMD", help="Start the clinic node under test with this command.")
@click.option(
    "--patient-seed",
    metavar="HEX",
    envvar="FEDRECORD_CONFORMANCE_SEED",
    help="The 32-byte seed of the patient's signing key the target was started with (random with --launch).",
)
@click.option(
    "--peer-seed",
    metavar="HEX",
    help="The 32-byte seed of the clinic node's signing key the peer was started with (random with --launch-peer).",
)
@click.option(
    "--only",
    metavar="TAGS",
    help="Comma-separated tags, case ids, id prefixes ending in '.', or requirement ids.",
)
@click.option(
    "--skip", metavar="TAGS", help="Tags of optional features the target declares it does not implement."
)
@click.option(
    "--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write a JUnit XML report here."
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a JSON report here."
)
@click.option(
    "--coverage", "show_coverage", is_flag=True, help="Print the MUST requirements the cases test, and exit."
)
@click.option("--list", "list_cases", is_flag=True, help="List the cases with their requirements, and exit.")
@click.option(
    "--log", type=click.Path(dir_okay=False, path_type=Path), help="Append launched nodes' output here."
)
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary.")
def main(
    target: str | None,
    launch: str | None,
    peer: str | None,
    launch_peer: str | None,
    patient_seed: str | None,
    peer_seed: str | None,
    only: str | None,
    skip: str | None,
    junit: Path | None,
    json_path: Path | None,
    show_coverage: bool,
    list_cases: bool,
    log: Path | None,
    quiet: bool,
) -> None:
    """Black-box conformance tests of a fedrecord node: exit 0 when every case run passed.

    The suite plays the other nodes itself (clinics, devices, a malicious
    peer) and acts as the patient with the key made from --patient-seed.
    """
    cases = select(all_cases(), _tags(only))
    if show_coverage:
        click.echo(coverage(cases).text())
        return
    if list_cases:
        for c in cases:
            click.echo(f"{c.id:48} {', '.join(c.requirements)}")
        return
    if bool(target) == bool(launch):
        raise click.UsageError("give exactly one of --target URL and --launch CMD")
    if peer and launch_peer:
        raise click.UsageError("give at most one of --peer URL and --launch-peer CMD")
    seed = _seed(patient_seed)
    if seed is None:
        if target:
            raise click.UsageError(
                "--target needs --patient-seed: the seed the target's patient key was made from"
            )
        seed = os.urandom(32)
    clinic_seed = _seed(peer_seed, "--peer-seed")
    if launch_peer and clinic_seed is None:
        clinic_seed = os.urandom(32)
    if not cases:
        raise click.UsageError(f"no case matches --only {only}")

    def show(result: Result) -> None:
        if quiet and result.status != "failed":
            return
        mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[result.status]
        line = f"{mark} {result.case.id}"
        if result.message:
            line += f": {result.message}"
        click.echo(line)

    async def run() -> tuple[list[Result], str, str | None]:
        async with contextlib.AsyncExitStack() as stack:
            if target:
                url = target
            else:
                url = await stack.enter_async_context(launched(launch or "", role="patient", seed=seed, log=log))
            peer_url = peer
            if launch_peer:
                peer_url = await stack.enter_async_context(
                    launched(launch_peer, role="clinic", seed=clinic_seed, log=log)
                )
            session = await Session.open(
                url, seed, peer=peer_url, peer_seed=clinic_seed, skips=sorted(_tags(skip))
            )
            stack.push_async_callback(session.close)
            return await run_cases(session, cases, on_result=show), url, peer_url

    try:
        results, url, peer_url = asyncio.run(run())
    except (LaunchError, Failed) as exc:
        click.echo(f"fedrecord-conformance: {exc}", err=True)
        sys.exit(2)
    covered = coverage([r.case for r in results if r.status != "skipped"])
    click.echo(summary(results, covered))
    if junit is not None:
        write_junit(junit, results, target=url)
    if json_path is not None:
        write_json(json_path, report_data(results, covered, target=url, peer=peer_url))
    sys.exit(1 if any(r.status == "failed" for r in results) else 0)


if __name__ == "__main__":
    main()
