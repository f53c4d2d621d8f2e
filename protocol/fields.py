"""Typed readers for envelope header fields; every failure is a ProtocolError
that names the field."""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ProtocolError

MAX_TEXT = 1024
# C0 control characters and DEL. A NUL is refused by PostgreSQL text columns
# (the whole batch's commit fails), and none of these belong in an id, label,
# strategy or reason. Prose fields (Status.detail, notes) may carry tab and
# line breaks: an error message can span lines.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
PROSE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control(value: str, prose: bool = False) -> bool:
    """True when ``value`` holds a control character its kind of field refuses."""
    return (PROSE_CONTROL_RE if prose else CONTROL_RE).search(value) is not None


class Fields:
    """Reads fields of one header map, naming the message kind in errors."""

    def __init__(self, kind: str, header: dict) -> None:
        self.kind = kind
        self.header = header

    def _get(self, name: str, default: Any = ...) -> Any:
        if name in self.header:
            return self.header[name]
        if default is ...:
            raise ProtocolError("missing_field", f"{self.kind}.{name} is required")
        return default

    def _bad(self, name: str, why: str) -> ProtocolError:
        return ProtocolError("bad_field", f"{self.kind}.{name} {why}")

    def text(self, name: str, max_len: int = MAX_TEXT, pattern: re.Pattern | None = None,
             default: Any = ..., choices: tuple[str, ...] | None = None, prose: bool = False) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or len(value) > max_len:
            raise self._bad(name, f"must be a string of at most {max_len} characters")
        if has_control(value, prose):
            allowed = " (tab and line breaks are allowed)" if prose else ""
            raise self._bad(name, f"must not contain control characters{allowed}")
        if pattern is not None and not pattern.match(value):
            raise self._bad(name, f"must match {pattern.pattern}")
        if choices is not None and value not in choices:
            raise self._bad(name, f"must be one of {', '.join(choices)}")
        return value

    def integer(self, name: str, lo: int, hi: int, default: Any = ...) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._bad(name, f"must be an integer in [{lo}, {hi}]")
        return value

    def number(self, name: str, lo: float, hi: float, default: Any = ...) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(name, "must be a number")
        value = float(value)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise self._bad(name, f"must be a finite number in [{lo}, {hi}]")
        return value

    def boolean(self, name: str, default: Any = ...) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self._bad(name, "must be true or false")
        return value

    def blob(self, name: str, max_len: int, exact: int | None = None) -> bytes:
        value = self._get(name)
        if not isinstance(value, bytes) or len(value) > max_len or (exact is not None and len(value) != exact):
            size = f"exactly {exact}" if exact is not None else f"at most {max_len}"
            raise self._bad(name, f"must be {size} bytes of binary")
        return value

    def array(self, name: str, max_len: int, default: Any = ...) -> list:
        value = self._get(name, default)
        if not isinstance(value, (list, tuple)) or len(value) > max_len:
            raise self._bad(name, f"must be an array of at most {max_len} items")
        return list(value)

    def mapping(self, name: str, max_len: int, default: Any = ...) -> dict:
        value = self._get(name, default)
        if not isinstance(value, dict) or len(value) > max_len:
            raise self._bad(name, f"must be a map of at most {max_len} entries")
        return value

    def text_list(self, name: str, max_len: int, item_max: int = 64,
                  pattern: re.Pattern | None = None, default: Any = ...) -> tuple[str, ...]:
        items = self.array(name, max_len, default)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not 0 < len(item) <= item_max or (pattern and not pattern.match(item)) \
                    or has_control(item):
                raise self._bad(f"{name}[{i}]", f"must be a non-empty string of at most {item_max} characters"
                                " without control characters")
        return tuple(items)

    def number_list(self, name: str, max_len: int, lo: float, hi: float) -> tuple[float, ...]:
        out = []
        for i, item in enumerate(self.array(name, max_len)):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) \
                    or not lo <= item <= hi:
                raise self._bad(f"{name}[{i}]", f"must be a finite number in [{lo}, {hi}]")
            out.append(float(item))
        return tuple(out)

    def counters(self, name: str, max_len: int = 256, default: Any = ...) -> dict[str, int]:
        out = {}
        for key, value in self.mapping(name, max_len, default).items():
            if not isinstance(key, str) or len(key) > 64 or has_control(key):
                raise self._bad(name, "keys must be strings of at most 64 characters without control characters")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise self._bad(f"{name}.{key}", "must be a non-negative integer")
            out[key] = value
        return out
