"""Timestamps as the API server parses and prints them.

metav1.Time is RFC 3339 printed with whole seconds (any fraction is accepted on input, like Go's
time.Parse with time.RFC3339). metav1.MicroTime is parsed with the layout
`2006-01-02T15:04:05.000000Z07:00`: exactly six fractional digits, or the request fails (fixture 09/0,
09/6, 09/8). Errors carry Go's wording, which clients show to people.
"""

from __future__ import annotations

import datetime as dt
import json

RFC3339 = "2006-01-02T15:04:05Z07:00"
MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"

# The layout elements of the two layouts above: (text, kind); kind None marks literal text.
_ELEMENTS: dict[str, list[tuple[str, str | None]]] = {
    RFC3339: [
        ("2006", "year"),
        ("-", None),
        ("01", "month"),
        ("-", None),
        ("02", "day"),
        ("T", None),
        ("15", "hour"),
        (":", None),
        ("04", "minute"),
        (":", None),
        ("05", "second"),
        ("Z07:00", "zone"),
    ],
    MICRO_LAYOUT: [
        ("2006", "year"),
        ("-", None),
        ("01", "month"),
        ("-", None),
        ("02", "day"),
        ("T", None),
        ("15", "hour"),
        (":", None),
        ("04", "minute"),
        (":", None),
        ("05", "second"),
        (".000000", "frac6"),
        ("Z07:00", "zone"),
    ],
}


class TimeParseError(ValueError):
    """A timestamp Go's time.Parse would reject; str() is Go's message."""


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _digits(value: str, n: int) -> int | None:
    part = value[:n]
    return int(part) if len(part) == n and part.isdigit() else None


def go_parse(value: str, layout: str) -> dt.datetime:
    """Parse like Go's time.Parse for the two layouts the API uses; raise TimeParseError with Go's text."""
    elements = _ELEMENTS[layout]
    rest = value
    parts: dict[str, int] = {}
    nanos = 0
    offset = 0

    def fail(elem: str, at: str) -> TimeParseError:
        return TimeParseError(f"parsing time {_q(value)} as {_q(layout)}: cannot parse {_q(at)} as {_q(elem)}")

    # Go reports a literal together with the element that follows it, so remember the pending literal.
    pending = ""
    for text, kind in elements:
        if kind is None:
            pending += text
            continue
        if pending:
            if not rest.startswith(pending):
                raise fail(pending, rest)
            rest = rest[len(pending) :]
            pending = ""
        if kind in ("year",):
            n = _digits(rest, 4)
            if n is None:
                raise fail(text, rest)
            parts[kind], rest = n, rest[4:]
        elif kind in ("month", "day", "minute", "second"):
            n = _digits(rest, 2)
            if n is None:
                raise fail(text, rest)
            parts[kind], rest = n, rest[2:]
            if kind == "second" and layout == RFC3339 and len(rest) >= 2 and rest[0] in ".," and rest[1].isdigit():
                # No fraction in the layout: Go still accepts one here.
                i = 1
                while i < len(rest) and rest[i].isdigit():
                    i += 1
                nanos = int((rest[1:i] + "000000000")[:9])
                rest = rest[i:]
        elif kind == "hour":
            n = _digits(rest, 2)
            if n is None:
                n1 = _digits(rest, 1)
                if n1 is None:
                    raise fail(text, rest)
                parts[kind], rest = n1, rest[1:]
            else:
                parts[kind], rest = n, rest[2:]
        elif kind == "frac6":
            if len(rest) < 7 or rest[0] not in ".," or not rest[1:7].isdigit():
                raise fail(text, rest)
            nanos, rest = int(rest[1:7]) * 1000, rest[7:]
        elif kind == "zone":
            if rest.startswith("Z"):
                offset, rest = 0, rest[1:]
            elif len(rest) >= 6 and rest[0] in "+-" and rest[3] == ":" and rest[1:3].isdigit() and rest[4:6].isdigit():
                sign = 1 if rest[0] == "+" else -1
                offset = sign * (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60)
                rest = rest[6:]
            else:
                raise fail(text, rest)
    if rest:
        raise TimeParseError(f"parsing time {_q(value)}: extra text: {_q(rest)}")
    for name, low, high in (("month", 1, 12), ("hour", 0, 23), ("minute", 0, 59), ("second", 0, 59)):
        if not low <= parts[name] <= high:
            raise TimeParseError(f"parsing time {_q(value)}: {name} out of range")
    try:
        naive = dt.datetime(
            parts["year"], parts["month"], parts["day"], parts["hour"], parts["minute"], parts["second"]
        )
    except ValueError:
        raise TimeParseError(f"parsing time {_q(value)}: day out of range") from None
    aware = naive.replace(tzinfo=dt.timezone(dt.timedelta(seconds=offset)))
    return (aware + dt.timedelta(microseconds=nanos // 1000)).astimezone(dt.UTC)


def format_time(t: dt.datetime) -> str:
    """metav1.Time: UTC, whole seconds."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro(t: dt.datetime) -> str:
    """metav1.MicroTime: UTC, six fractional digits."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def now_time() -> str:
    return format_time(now())


def normalize_time(value: str) -> str:
    """Parse a metav1.Time string and print it the way the server stores it."""
    return format_time(go_parse(value, RFC3339))


def normalize_micro(value: str) -> str:
    """Parse a metav1.MicroTime string (exactly 6 fractional digits) and print it back in UTC."""
    return format_micro(go_parse(value, MICRO_LAYOUT))
