"""`make demo`: three real node processes play the main story; the offline story still plays too."""

from __future__ import annotations

from click.testing import CliRunner

from fedrecord.cli import main
from fedrecord.offline_story import play


def test_offline_story_plays_and_narrates():
    lines: list[str] = []
    play(lines.append, now=1_790_000_000)
    text = "\n".join(lines)
    assert "the GP decrypted" in text and "refused with code revoked" in text


def test_demo_with_four_node_processes_exits_zero():
    """US-1 to US-9 between four real processes over loopback HTTP, each with its own database."""
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    for expected in (
        "the same code used twice is refused: error: replay",
        "the GP sees 1 document; the lithium level (PSY) does not appear at all",
        "asking for the lithium level by its id: error: not-found",
        "the specialist read 40 bytes under the delegated grant",
        "GP: error: revoked",
        "specialist: error: revoked",
        "Cabinet du Dr Martin: destroyed",
        "Laboratoire Pasteur: retained",
        "Every step behaved as the protocol requires",
    ):
        assert expected in result.output
