"""The history file: schema, validation with line numbers, streamed loading.

History file format
-------------------
A history file is JSON Lines: UTF-8 text, one JSON object per line, one object per
history item, oldest first (file order is taken as chronological order).
A file ending in ``.jsonl.gz`` (any gzip file, detected by its magic bytes, whatever its
name) is read the same way after decompression.

Fields of an item:

``text`` (required)
    String, non-empty after stripping whitespace: what the person wrote or did.
``id``
    String or integer (an integer becomes its decimal string). Default ``"line-N"``,
    where N is the item's 1-based line number.
``time``
    String, e.g. an ISO 8601 date ``"2024-05-01"`` or ``"2024-05-01T18:30:00Z"``, or null.
    Times are compared as strings, so use one format throughout the file.
``title``
    String, e.g. the title of a review.
``label``
    Non-empty string, e.g. a category or tag.
``rating``
    Number (not NaN or Infinity), e.g. 1 to 5 stars.
``prompt`` / ``input``
    String, non-empty: a question or request the person answered. ``input`` is an alias
    of ``prompt`` (give one of them, or both with the same value).
``output``
    String, non-empty: the person's answer to ``prompt``. ``prompt`` and ``output`` form
    a pair: an item with one must have the other.

A null value for any optional field means the same as leaving the field out.
Other fields are kept in ``HistoryItem.extra`` and otherwise ignored.
Blank lines are skipped; a UTF-8 byte-order mark at the start of the file is ignored.

Example lines::

    {"id": "r1", "time": "2024-03-02", "title": "Sturdy capo", "rating": 4, "label": "music", "text": "Holds tune..."}
    {"time": "2024-03-09", "prompt": "Best first knife?", "output": "A plain 8-inch chef's knife.", "text": "A plain 8-inch chef's knife."}

Every problem raises :class:`p2p_edge.errors.InputError` with one line naming the file,
line and field, e.g. ``history.jsonl:17: field 'text': must be a non-empty string, got int``.
Messages name the kind of a bad value (``got a string``), never its content: the history's
text does not end up in logs or terminals.

Loading streams the file in bounded chunks: memory stays bounded by ``keep_last`` items
plus one line (at most ``max_line_bytes``), whatever the file's size; the SHA-256 is
computed incrementally over the file's bytes as stored (compressed bytes for gzip).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import InputError

__all__ = ["HistoryItem", "History", "load_history", "KNOWN_FIELDS"]

KNOWN_FIELDS = frozenset({"text", "id", "time", "title", "label", "rating", "prompt", "input", "output"})

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_json_decode = json.JSONDecoder().decode  # = json.loads(s), one call layer less
_TYPE_NAMES = {str: "string", int: "int", float: "float", bool: "bool", list: "list", dict: "object", type(None): "null"}


@dataclass(frozen=True)
class HistoryItem:
    text: str
    id: str
    line: int                 # 1-based line number in the file
    time: str | None = None
    title: str | None = None
    label: str | None = None
    rating: float | None = None
    prompt: str | None = None
    output: str | None = None
    extra: dict = field(default_factory=dict, hash=False)  # unknown fields, as parsed


@dataclass
class History:
    path: Path
    items: list[HistoryItem]  # the most recent `keep_last` items (see load_history)
    n_items: int              # total valid items in the file
    sha256: str               # sha256 of the raw file bytes, as stored
    label_counts: dict[str, int]  # over all items in the file
    rating_sum: float
    rating_count: int


# --------------------------------------------------------------------------- reading


class _HashingReader:
    """A file-like reader that feeds every byte it returns into a hash."""

    def __init__(self, f, hasher):
        self.f, self.hasher = f, hasher

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.hasher.update(data)
        return data


class _Scan:
    """State of one pass over a file: the hash, filled in when the pass completes."""

    def __init__(self, path, max_line_bytes: int, opener=None):
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        self.path = path
        self.opener = opener
        self.max_line_bytes = max_line_bytes
        self.hasher = hashlib.sha256()
        self.sha256: str | None = None
        self.lineno = 0
        self.empty = True

    def _err(self, message: str, line: int | None = None, field: str | None = None) -> InputError:
        return InputError(self.path, message, line=line, field=field)

    def _open(self):
        if self.opener is not None:
            return self.opener()
        p = Path(self.path)
        if p.is_dir():
            raise self._err("is a directory, expected a JSON Lines history file")
        try:
            return open(p, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise self._err("file not found") from None
        except PermissionError:
            raise self._err("permission denied (cannot read the file)") from None
        except IsADirectoryError:
            raise self._err("is a directory, expected a JSON Lines history file") from None
        except OSError as e:
            raise self._err(f"cannot open: {e.strerror or e}") from None

    def _chunks(self) -> Iterator[bytes]:
        """Decompressed (if gzip) content in chunks of at most _CHUNK bytes; hashes the raw bytes."""
        f = self._open()
        with f:
            raw = _HashingReader(f, self.hasher)
            try:
                is_gzip = f.peek(2)[:2] == _GZIP_MAGIC
            except OSError as e:
                raise self._err(f"read error: {e.strerror or e}") from None
            src = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except EOFError:
                    raise self._err("gzip data is truncated (the file ends too early)", line=self.lineno + 1) from None
                except (gzip.BadGzipFile, zlib.error) as e:
                    raise self._err(f"corrupt gzip data: {e}", line=self.lineno + 1) from None
                except OSError as e:
                    raise self._err(f"read error: {e.strerror or e}", line=self.lineno + 1) from None
                if not chunk:
                    break
                yield chunk
            try:  # hash anything the decompressor left unread, so the hash covers the whole file
                while raw.read(_CHUNK):
                    pass
            except OSError as e:
                raise self._err(f"read error: {e.strerror or e}") from None
        self.sha256 = self.hasher.hexdigest()

    def _too_long(self, line: int, data: bytes | list[bytes]) -> InputError:
        parts = data if isinstance(data, list) else [data]
        if any(b"\x00" in p for p in parts):
            return self._binary(line)
        return self._err(
            f"line is longer than max_line_bytes={self.max_line_bytes} bytes "
            "(each history item must be one line of JSON; is this a JSON Lines file?)",
            line=line,
        )

    def _binary(self, line: int) -> InputError:
        return self._err("contains NUL bytes: this looks like a binary file, not UTF-8 JSON Lines text", line=line)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number, raw line without the newline), never holding more than one line plus one chunk."""
        limit = self.max_line_bytes
        pending: list[bytes] = []
        pending_len = 0
        first = True
        empty = True
        for chunk in self._chunks():
            empty = False
            if first:
                first = False
                if chunk.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise self._err("file is UTF-16 encoded (it starts with a UTF-16 byte-order mark); save it as UTF-8", line=1)
            parts = chunk.split(b"\n")
            tail = parts.pop()
            if parts and pending:
                pending.append(parts[0])
                parts[0] = b"".join(pending)
                pending, pending_len = [], 0
            for raw in parts:
                self.lineno += 1
                if len(raw) > limit:
                    raise self._too_long(self.lineno, raw)
                yield self.lineno, raw
            if tail:
                pending.append(tail)
                pending_len += len(tail)
                if pending_len > limit:
                    raise self._too_long(self.lineno + 1, pending)
        if pending:
            self.lineno += 1
            yield self.lineno, b"".join(pending)
        self.empty = empty

    def items(self) -> Iterator[HistoryItem]:
        n = 0
        for lineno, raw in self.lines():
            if lineno == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[3:]
            if not raw or raw.isspace():
                continue
            if b"\x00" in raw:
                raise self._binary(lineno)
            try:
                s = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise self._err(
                    f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte column {e.start + 1}); save the file as UTF-8",
                    line=lineno,
                ) from None
            try:
                obj = _json_decode(s)
            except json.JSONDecodeError as e:
                msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at"
                raise self._err(f"invalid JSON: {msg} (column {e.colno})", line=lineno) from None
            except RecursionError:
                raise self._err("invalid JSON: nested too deeply", line=lineno) from None
            except ValueError as e:  # an integer literal over sys.get_int_max_str_digits() digits
                what = "a number has too many digits" if "digits" in str(e) else str(e)
                raise self._err(f"invalid JSON: {what}", line=lineno) from None
            if "\\u" in s:
                self._check_surrogates(obj, lineno)
            n += 1
            yield _parse_item(obj, lineno, self._err)
        if n == 0:
            raise self._err("no history items: " + ("the file is empty" if self.empty else "the file has only blank lines"))

    def _check_surrogates(self, obj, lineno: int) -> None:
        """Reject \\uD800-style escapes that decode to lone surrogates (they cannot be written back as UTF-8)."""
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
            return
        except UnicodeEncodeError:
            pass
        except RecursionError:
            raise self._err("invalid JSON: nested too deeply", line=lineno) from None
        where = None
        if isinstance(obj, dict):
            for k, v in obj.items():
                try:
                    json.dumps({k: v}, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    where = _printable(k)
                    break
        raise self._err("contains a \\u escape of an unpaired surrogate (not valid Unicode text)", line=lineno, field=where)


# --------------------------------------------------------------------------- validation


def _printable(s: str) -> str:
    """Escape what could break a one-line message or a terminal (line separators, lone surrogates...)."""
    return s if s.isprintable() else "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def _got(v) -> str:
    """What a bad value is, never what it says: error messages must not echo the history's text."""
    if isinstance(v, float) and not math.isfinite(v):
        return "got NaN" if math.isnan(v) else ("got Infinity" if v > 0 else "got -Infinity")
    if isinstance(v, str):
        if not v:
            return "got an empty string"
        if v.isspace():
            return "got a whitespace-only string"
        return "got a string"
    return "got " + _TYPE_NAMES.get(type(v), type(v).__name__)


def _blank(v: str) -> bool:
    return not v or v.isspace()  # same as `not v.strip()`, without a copy


_STR_RULES = {  # optional string fields: (must be non-empty, expected-type wording)
    "time": (False, 'a string (e.g. an ISO date "2024-05-01") or null'),
    "title": (False, "a string"),
    "label": (True, "a non-empty string"),
    "prompt": (True, "a non-empty string"),
    "input": (True, "a non-empty string"),
    "output": (True, "a non-empty string"),
}


def _bad_str(key: str, v, lineno: int, err) -> InputError:
    return err(f"must be {_STR_RULES[key][1]}, {_got(v)}", line=lineno, field=key)


def _pair(obj: dict, lineno: int, err) -> tuple[str | None, str | None]:
    """(prompt, output) of an item that has at least one of prompt / input / output (non-null)."""
    prompt, alias, output = obj.get("prompt"), obj.get("input"), obj.get("output")
    for key, v in (("prompt", prompt), ("input", alias), ("output", output)):
        if v is not None and (type(v) is not str or _blank(v)):
            raise _bad_str(key, v, lineno, err)
    if alias is not None:
        if prompt is not None and prompt != alias:
            raise err("is an alias of 'prompt'; give one of them, not both with different values", line=lineno, field="input")
        prompt = alias
    if output is None:
        name = "prompt" if obj.get("prompt") is not None else "input"
        raise err(f"has no matching 'output' on this item ('{name}' and 'output' form a pair)", line=lineno, field=name)
    if prompt is None:
        raise err("has no matching 'prompt' (or 'input') on this item ('prompt' and 'output' form a pair)",
                  line=lineno, field="output")
    return prompt, output


def _parse_item(obj, lineno: int, err) -> HistoryItem:
    if type(obj) is not dict:
        raise err(f'each line must be a JSON object like {{"text": "..."}}, {_got(obj)}', line=lineno)
    get = obj.get

    text = get("text")
    if type(text) is not str or not text or text.isspace():
        if "text" not in obj:
            keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise err(f"required field is missing (keys on this line: {keys})", line=lineno, field="text")
        raise err(f"must be a non-empty string, {_got(text)}", line=lineno, field="text")
    if len(obj) == 1:
        return HistoryItem(text, f"line-{lineno}", lineno)

    id_ = get("id")
    if id_ is None:
        id_ = f"line-{lineno}"
    elif type(id_) is int:
        id_ = str(id_)
    elif type(id_) is not str or _blank(id_):
        raise err(f"must be a non-empty string or an int, {_got(id_)}", line=lineno, field="id")

    time, title, label = get("time"), get("title"), get("label")
    if time is not None and type(time) is not str:
        raise _bad_str("time", time, lineno, err)
    if title is not None and type(title) is not str:
        raise _bad_str("title", title, lineno, err)
    if label is not None and (type(label) is not str or _blank(label)):
        raise _bad_str("label", label, lineno, err)

    rating = get("rating")
    if rating is not None:
        if type(rating) is int:
            rating = float(rating)
        elif type(rating) is not float or not math.isfinite(rating):
            raise err(f"must be a finite number, {_got(rating)}", line=lineno, field="rating")

    if get("prompt") is None and get("input") is None and get("output") is None:
        prompt = output = None
    else:
        prompt, output = _pair(obj, lineno, err)

    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    return HistoryItem(text, id_, lineno, time, title, label, rating, prompt, output, extra)


# --------------------------------------------------------------------------- public API


def load_history(path, *, keep_last: int = 512, max_items: int = 10_000_000,
                 max_line_bytes: int = 1 << 20, opener=None) -> History:
    """Validate a whole history file and keep its most recent `keep_last` items.

    The kept items are the last `keep_last` valid items in file order; if every kept item
    has a `time`, they are sorted by (time, line). `n_items`, `label_counts` and the rating
    sums cover all items in the file. More than `max_items` items is an InputError.

    `opener`: a callable returning a binary file object with ``peek`` (e.g. ``io.BufferedReader``), read
    instead of opening `path`; `path` then only names the source in errors and in ``History.path``.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    scan = _Scan(path, max_line_bytes, opener)
    kept: deque[HistoryItem] = deque(maxlen=keep_last)
    label_counts: dict[str, int] = {}
    rating_sum, rating_count, n = 0.0, 0, 0
    for item in scan.items():
        n += 1
        if n > max_items:
            raise InputError(path, f"more than max_items={max_items} history items; keep a recent slice of the file",
                             line=item.line)
        kept.append(item)
        if item.label is not None:
            label_counts[item.label] = label_counts.get(item.label, 0) + 1
        if item.rating is not None:
            rating_sum += item.rating
            rating_count += 1
    items = list(kept)
    if items and all(it.time is not None for it in items):
        items.sort(key=lambda it: (it.time, it.line))
    assert scan.sha256 is not None
    return History(path=Path(path), items=items, n_items=n, sha256=scan.sha256, label_counts=label_counts,
                   rating_sum=rating_sum, rating_count=rating_count)
