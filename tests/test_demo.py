"""`make demo` plays the offline story; it must behave as the protocol requires."""

from __future__ import annotations

from click.testing import CliRunner

from fedrecord.cli import main
from fedrecord.offline_story import play


def test_story_plays_and_narrates():
    lines: list[str] = []
    play(lines.append, now=1_790_000_000)
    text = "\n".join(lines)
    assert "the GP decrypted" in text and "refused with code revoked" in text


def test_demo_command_exits_zero():
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert "The story behaved as the protocol requires." in result.output
