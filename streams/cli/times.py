"""How the command line reads points in time and durations (``--since``, ``--by-duration``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer


def parse_time(text: str) -> datetime:
    """ISO 8601 (``2026-01-01T12:00``, ``...Z``, with an offset) or milliseconds since the epoch."""
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an ISO 8601 datetime nor milliseconds since the epoch"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # naive means UTC


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, or an ISO 8601 duration such as ``PT1H30M`` / ``P1D``."""
    simple = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if simple:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[simple.group(2)]
        return timedelta(**{unit: int(simple.group(1))})
    iso = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text.strip())
    if iso and any(iso.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise typer.BadParameter(f"{text!r} is not a duration such as 15m, 2h, 1d or PT1H30M")
