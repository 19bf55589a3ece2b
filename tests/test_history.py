"""Tests for p2p_edge.history: schema, one-line errors with line/field, streaming, hashing."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p_edge import history as history_mod
from p2p_edge.errors import InputError
from p2p_edge.history import History, HistoryItem, load_history

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "history.jsonl"


def write_lines(path: Path, lines: list, newline: str = "\n") -> Path:
    """Write JSON lines: dicts/lists/values are json.dumps'ed, str is written verbatim."""
    out = [x if isinstance(x, str) else json.dumps(x) for x in lines]
    path.write_text("".join(s + newline for s in out), encoding="utf-8")
    return path


def error_of(path, **kw) -> InputError:
    with pytest.raises(InputError) as ei:
        load_history(path, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and msg.isprintable(), msg
    assert msg.startswith(str(path)), msg
    return ei.value


# --------------------------------------------------------------------------- happy paths


def test_example_file_loads():
    h = load_history(EXAMPLE)
    assert isinstance(h, History)
    assert 30 <= h.n_items <= 40
    assert len(h.items) == h.n_items
    assert [it.line for it in h.items] == list(range(1, h.n_items + 1))
    times = [it.time for it in h.items]
    assert all(times) and times == sorted(times)
    ids = [it.id for it in h.items]
    assert len(set(ids)) == len(ids)
    reviews = [it for it in h.items if it.rating is not None]
    assert len(reviews) >= 12 and all(it.title for it in reviews)
    assert all(1 <= it.rating <= 5 for it in reviews)
    assert 3.5 <= h.rating_sum / h.rating_count <= 4.5
    assert min(it.rating for it in reviews) <= 2
    pairs = [it for it in h.items if it.prompt is not None]
    assert 3 <= len(pairs) <= 4 and all(it.output for it in pairs)
    assert sum(h.label_counts.values()) == sum(1 for it in h.items if it.label)
    assert len(h.label_counts) >= 2
    assert all(it.extra == {} for it in h.items)
    assert h.sha256 == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def test_fields_and_defaults(tmp_path):
    p = write_lines(tmp_path / "h.jsonl", [
        {"text": "just text"},
        {"text": "full", "id": 7, "time": "2024-01-02", "title": "T", "label": "L", "rating": 4,
         "prompt": "q?", "output": "a."},
        {"text": "alias", "input": "q2", "output": "a2", "id": "x"},
        {"text": "nulls", "id": None, "time": None, "title": None, "label": None, "rating": None,
         "prompt": None, "output": None},
        {"text": "both same", "prompt": "q3", "input": "q3", "output": "a3"},
        {"text": "float", "rating": 2.5},
    ])
    items = load_history(p).items
    assert items[0] == HistoryItem(text="just text", id="line-1", line=1)
    assert items[1] == HistoryItem(text="full", id="7", line=2, time="2024-01-02", title="T", label="L",
                                   rating=4.0, prompt="q?", output="a.")
    assert isinstance(items[1].rating, float)
    assert (items[2].prompt, items[2].output, items[2].id) == ("q2", "a2", "x")
    assert items[3] == HistoryItem(text="nulls", id="line-4", line=4)
    assert items[4].prompt == "q3"
    assert items[5].rating == 2.5
    hash(items[1])  # frozen items stay hashable (extra is excluded from the hash)


def test_unknown_fields_kept_in_extra(tmp_path):
    p = write_lines(tmp_path / "h.jsonl", [{"text": "a", "source": "blog", "tags": ["x", 1], "Text": "caps"}])
    (item,) = load_history(p).items
    assert item.extra == {"source": "blog", "tags": ["x", 1], "Text": "caps"}


def test_blank_lines_crlf_and_no_final_newline(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_bytes(b'\n  \n{"text": "a"}\r\n\r\n\t\n{"text": "b"}\r\n{"text": "c"}')
    h = load_history(p)
    assert [(it.text, it.line) for it in h.items] == [("a", 3), ("b", 6), ("c", 7)]


def test_only_newline_splits_lines(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_bytes('{"text": "a\u2028b\x85c",\r "title": "t\u2029"}\r\n{"text": "z"}'.encode())
    h = load_history(p)
    assert [(it.text, it.title, it.line) for it in h.items] == [("a\u2028b\x85c", "t\u2029", 1), ("z", None, 2)]


def test_bom_tolerated(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"text": "hello"}\n{"text": "again"}\n')
    h = load_history(p)
    assert [it.text for it in h.items] == ["hello", "again"]
    assert h.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_bom_then_blank_first_line(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_bytes(b'\xef\xbb\xbf\n{"text": "x"}\n')
    assert load_history(p).items[0].line == 2


def test_gzip_input_detected_by_magic_and_hashed_as_stored(tmp_path):
    raw = EXAMPLE.read_bytes()
    for name in ("h.jsonl.gz", "h.jsonl"):  # the name doesn't matter: the magic bytes do
        gz = tmp_path / name
        gz.write_bytes(gzip.compress(raw))
        h = load_history(gz)
        plain = load_history(EXAMPLE)
        assert h.items == plain.items and h.n_items == plain.n_items
        assert h.sha256 == hashlib.sha256(gz.read_bytes()).hexdigest() != plain.sha256


def test_gzip_multimember_and_bom(tmp_path):
    gz = tmp_path / "h.jsonl.gz"
    gz.write_bytes(gzip.compress(b'\xef\xbb\xbf{"text": "a"}\n') + gzip.compress(b'{"text": "b"}\n'))
    assert [it.text for it in load_history(gz).items] == ["a", "b"]


def test_keep_last_window_and_counts_over_all(tmp_path):
    rows = [{"text": f"t{i}", "label": "odd" if i % 2 else "even", "rating": i % 5 + 1} for i in range(100)]
    p = write_lines(tmp_path / "h.jsonl", rows)
    h = load_history(p, keep_last=10)
    assert h.n_items == 100
    assert [it.text for it in h.items] == [f"t{i}" for i in range(90, 100)]
    assert h.label_counts == {"even": 50, "odd": 50}
    assert h.rating_count == 100
    assert h.rating_sum == sum(i % 5 + 1 for i in range(100))
    assert h.rating_sum / h.rating_count == pytest.approx(3.0)
    h0 = load_history(p, keep_last=0)
    assert h0.items == [] and h0.n_items == 100
    assert load_history(p, keep_last=1000).n_items == len(load_history(p, keep_last=1000).items) == 100
    assert load_history(write_lines(tmp_path / "n.jsonl", [{"text": "x"}])).rating_count == 0


def test_kept_items_sorted_by_time_when_all_have_time(tmp_path):
    rows = [{"text": "a", "time": "2024-03-01"}, {"text": "b", "time": "2024-01-01"},
            {"text": "c", "time": "2024-02-01"}, {"text": "d", "time": "2024-01-01"}]
    p = write_lines(tmp_path / "h.jsonl", rows)
    assert [it.text for it in load_history(p).items] == ["b", "d", "c", "a"]
    assert [it.text for it in load_history(p, keep_last=2).items] == ["d", "c"]
    rows[2] = {"text": "c"}  # one kept item without a time: file order is kept
    p = write_lines(tmp_path / "h2.jsonl", rows)
    assert [it.text for it in load_history(p).items] == ["a", "b", "c", "d"]


def test_sha256_matches_hashlib(tmp_path):
    p = write_lines(tmp_path / "h.jsonl", [{"text": f"x{i}" * 50} for i in range(30_000)])  # > 1 chunk
    assert p.stat().st_size > 2 << 20
    assert load_history(p).sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_lines_spanning_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(history_mod, "_CHUNK", 7)
    rows = [{"text": "a" * n, "id": n} for n in (1, 6, 7, 8, 20, 3)]
    p = write_lines(tmp_path / "h.jsonl", rows)
    h = load_history(p)
    assert [(it.text, it.line) for it in h.items] == [(r["text"], i) for i, r in enumerate(rows, 1)]
    assert h.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    p.write_bytes(b'{"text": "abc"}\n{"text": "' + b"x" * 40 + b'"}\n')
    assert error_of(p, max_line_bytes=30).line == 2


# --------------------------------------------------------------------------- errors


def test_file_not_found(tmp_path):
    e = error_of(tmp_path / "nope.jsonl")
    assert "file not found" in str(e) and e.line is None


def test_directory(tmp_path):
    assert "is a directory" in str(error_of(tmp_path))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read mode-000 files")
def test_permission_denied_real(tmp_path):
    p = write_lines(tmp_path / "h.jsonl", [{"text": "a"}])
    p.chmod(0)
    try:
        assert "permission denied" in str(error_of(p))
    finally:
        p.chmod(0o600)


def test_permission_denied(tmp_path, monkeypatch):
    p = write_lines(tmp_path / "h.jsonl", [{"text": "a"}])

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(history_mod, "open", deny, raising=False)
    assert "permission denied" in str(error_of(p))


def test_empty_and_blank_files(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_bytes(b"")
    assert str(error_of(p)) == f"{p}: no history items: the file is empty"
    p.write_bytes(b"\n   \n\r\n\t\n")
    assert "no history items" in str(error_of(p))
    gz = tmp_path / "e.jsonl.gz"
    gz.write_bytes(gzip.compress(b""))
    assert "no history items" in str(error_of(gz))


@pytest.mark.parametrize("content, line, field, fragment", [
    # encoding and binary junk
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2, None, "invalid UTF-8 (byte 0xe9 at byte column"),
    (b'{"text": "ok"}\n{"text": "a\x00b"}\n', 2, None, "NUL bytes"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, None, "invalid UTF-8 (byte 0x89 at byte column 1)"),
    (b"\x00\x01\x02\x03", 1, None, "binary"),
    ('{"text": "utf16"}\n'.encode("utf-16"), 1, None, "UTF-16"),
    # JSON syntax
    (b'{"text": "a"}\n\n{"text": "b",}\n', 3, None, "invalid JSON: Expecting property name enclosed in double quotes (column 14)"),
    (b'{"text": "a"\n', 1, None, "invalid JSON: Expecting ',' delimiter (column 13)"),
    (b'{"text": "a"} {"text": "b"}\n', 1, None, "invalid JSON: Extra data (column 15)"),
    (b"text: hello\n", 1, None, "invalid JSON"),
    (b'{"text": 1' + b"0" * 5000 + b"}\n", 1, None, "invalid JSON: a number has too many digits"),
    (b'{"text": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", 1, None, "nested too deeply"),
    # not an object
    (b'["text", "a"]\n', 1, None, 'must be a JSON object like {"text": "..."}, got list'),
    (b"42\n", 1, None, "must be a JSON object like {\"text\": \"...\"}, got int"),
    (b'"just a string"\n', 1, None, 'must be a JSON object like {"text": "..."}, got a string'),
    (b"null\n", 1, None, "got null"),
    # text
    (b'{"text": "a"}\n{"body": "b", "date": "2024"}\n', 2, "text", "required field is missing (keys on this line: 'body', 'date')"),
    (b"{}\n", 1, "text", "required field is missing (keys on this line: none)"),
    (b'{"text": 5}\n', 1, "text", "must be a non-empty string, got int"),
    (b'{"text": ""}\n', 1, "text", "must be a non-empty string, got an empty string"),
    (b'{"text": "  \\n "}\n', 1, "text", "must be a non-empty string, got a whitespace-only string"),
    (b'{"text": null}\n', 1, "text", "must be a non-empty string, got null"),
    (b'{"text": ["a"]}\n', 1, "text", "got list"),
    # other fields
    (b'{"text": "a", "id": 1.5}\n', 1, "id", "must be a non-empty string or an int, got float"),
    (b'{"text": "a", "id": true}\n', 1, "id", "got bool"),
    (b'{"text": "a", "id": ""}\n', 1, "id", "got an empty string"),
    (b'{"text": "a", "time": 20240501}\n', 1, "time", "must be a string (e.g. an ISO date \"2024-05-01\") or null, got int"),
    (b'{"text": "a", "title": 3}\n', 1, "title", "must be a string, got int"),
    (b'{"text": "a", "label": ["x"]}\n', 1, "label", "must be a non-empty string, got list"),
    (b'{"text": "a", "label": ""}\n', 1, "label", "got an empty string"),
    (b'{"text": "a", "rating": "five"}\n', 1, "rating", 'must be a finite number, got a string'),
    (b'{"text": "a", "rating": true}\n', 1, "rating", "must be a finite number, got bool"),
    (b'{"text": "a", "rating": {"v": 1}}\n', 1, "rating", "got object"),
    (b'{"text": "a", "rating": NaN}\n', 1, "rating", "must be a finite number, got NaN"),
    (b'{"text": "a", "rating": Infinity}\n', 1, "rating", "got Infinity"),
    (b'{"text": "a", "rating": -Infinity}\n', 1, "rating", "got -Infinity"),
    (b'{"text": "a", "rating": 1e999}\n', 1, "rating", "got Infinity"),
    (b'{"text": "a", "prompt": 1, "output": "b"}\n', 1, "prompt", "must be a non-empty string, got int"),
    (b'{"text": "a", "prompt": "q", "output": ""}\n', 1, "output", "got an empty string"),
    (b'{"text": "a", "prompt": "q"}\n', 1, "prompt", "has no matching 'output'"),
    (b'{"text": "a", "input": "q"}\n', 1, "input", "has no matching 'output'"),
    (b'{"text": "a", "output": "o"}\n', 1, "output", "has no matching 'prompt' (or 'input')"),
    (b'{"text": "a", "prompt": "q", "output": null}\n', 1, "prompt", "has no matching 'output'"),
    (b'{"text": "a", "prompt": "q", "input": "r", "output": "o"}\n', 1, "input", "alias of 'prompt'"),
    (b'{"text": "a\\ud800b"}\n', 1, "text", "unpaired surrogate"),
    (b'{"text": "a", "meta": {"k": "\\udfff"}}\n', 1, "meta", "unpaired surrogate"),
    (b'{"text": "a", "\\ud800": 1}\n', 1, "\\ud800", "unpaired surrogate"),
    ('{"text": "a", "rating": "\u2028five\\u001b[31m"}\n'.encode(), 1, "rating", 'must be a finite number, got a string'),
    (b'{"text": "a\x1b[31m"}\n', 1, None, "invalid JSON: Invalid control character (column 12)"),
])
def test_bad_lines(tmp_path, content, line, field, fragment):
    p = tmp_path / "history.jsonl"
    p.write_bytes(content)
    e = error_of(p)
    assert (e.line, e.field) == (line, field), str(e)
    assert fragment in str(e), str(e)
    prefix = f"{p}:{line}:" + (f" field '{field}':" if field else "")
    assert str(e).startswith(prefix), str(e)


def test_error_message_format_from_brief(tmp_path):
    p = tmp_path / "history.jsonl"
    write_lines(p, [{"text": f"ok {i}"} for i in range(15)] + ["", '{"text": 3}'])
    e = error_of(p)
    assert str(e) == f"{p}:17: field 'text': must be a non-empty string, got int"


def test_valid_lines_before_error_do_not_hide_it(tmp_path):
    p = write_lines(tmp_path / "h.jsonl", [{"text": "a"}] * 1000 + [{"text": "b", "rating": "x"}])
    assert error_of(p, keep_last=5).line == 1001


def test_line_too_long(tmp_path):
    p = tmp_path / "h.jsonl"
    long = b'{"text": "' + b"x" * 2000 + b'"}'
    p.write_bytes(b'{"text": "a"}\n' + long + b"\n")
    e = error_of(p, max_line_bytes=1000)
    assert e.line == 2 and "longer than max_line_bytes=1000" in str(e)
    p.write_bytes(b'{"text": "a"}\n' + long)  # last line without a newline
    assert error_of(p, max_line_bytes=1000).line == 2
    p.write_bytes(long + b"\n")
    assert load_history(p, max_line_bytes=len(long)).n_items == 1
    assert error_of(p, max_line_bytes=len(long) - 1).line == 1


def test_line_too_long_reads_bounded_memory(tmp_path):
    p = tmp_path / "h.jsonl"
    with open(p, "wb") as f:  # 48 MiB with no newline at all
        f.write(b'{"text": "a"}\n{"text": "')
        block = b"y" * (1 << 20)
        for _ in range(48):
            f.write(block)
    tracemalloc.start()
    try:
        e = error_of(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.line == 2 and "longer than max_line_bytes=1048576" in str(e)
    assert peak < 8 << 20, peak


def test_endless_nul_bytes_reported_as_binary(tmp_path):
    p = tmp_path / "h.bin"
    p.write_bytes(b"\x00" * (3 << 20))
    assert "NUL bytes" in str(error_of(p))


def test_max_items(tmp_path):
    p = write_lines(tmp_path / "h.jsonl", [{"text": "a"}] * 5 + [""] + [{"text": "b"}])
    assert load_history(p, max_items=6).n_items == 6
    e = error_of(p, max_items=5)
    assert e.line == 7 and "more than max_items=5" in str(e)


def test_corrupt_and_truncated_gzip(tmp_path):
    data = gzip.compress(EXAMPLE.read_bytes())
    p = tmp_path / "h.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    assert "truncated" in str(error_of(p))
    p.write_bytes(data[:10] + bytes(b ^ 0x55 for b in data[10:200]) + data[200:])
    assert "gzip" in str(error_of(p))
    p.write_bytes(b"\x1f\x8b\x00garbage")
    assert "gzip" in str(error_of(p))


def test_bad_arguments():
    with pytest.raises(ValueError):
        load_history(EXAMPLE, keep_last=-1)
    with pytest.raises(ValueError):
        load_history(EXAMPLE, max_line_bytes=0)
    with pytest.raises(ValueError):
        load_history(EXAMPLE, max_items=0)


# --------------------------------------------------------------------------- scale


def test_streams_200k_items_with_bounded_memory(tmp_path):
    n, keep = 200_000, 64
    p = tmp_path / "big.jsonl"
    plain = '{"text": "note %d"}\n'  # mostly minimal rows: tracemalloc makes every allocation slow
    rich = '{"id": %d, "label": "%s", "rating": %d, "text": "note about guitars and bread"}\n'
    with open(p, "w") as f:
        for start in range(0, n, 10_000):
            f.write("".join(rich % (i, "ab"[i % 2], i % 5 + 1) if i % 10 == 0 or i >= n - keep else plain % i
                            for i in range(start, start + 10_000)))
    rich_ids = [i for i in range(n) if i % 10 == 0 or i >= n - keep]
    tracemalloc.start()
    try:
        h = load_history(p, keep_last=keep)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, peak
    assert h.n_items == n and len(h.items) == keep
    assert [it.id for it in h.items] == [str(i) for i in range(n - keep, n)]
    assert h.label_counts == {"a": sum(1 for i in rich_ids if i % 2 == 0), "b": sum(1 for i in rich_ids if i % 2)}
    assert h.rating_count == len(rich_ids) and h.rating_sum == sum(i % 5 + 1 for i in rich_ids)
    assert h.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- properties

_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
_opt = lambda s: st.one_of(st.none(), s)  # noqa: E731
_item = st.fixed_dictionaries(
    {"text": _text},
    optional={
        "id": st.one_of(_text, st.integers()),
        "time": _opt(st.text(max_size=25)),
        "title": _opt(st.text(max_size=20)),
        "label": _opt(_text),
        "rating": _opt(st.one_of(st.integers(-10, 10), st.floats(allow_nan=False, allow_infinity=False))),
        "pair": st.tuples(_text, _text, st.sampled_from(["prompt", "input"])),
        "extra": st.dictionaries(st.text(max_size=8).filter(lambda k: k not in history_mod.KNOWN_FIELDS),
                                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                              lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                                              max_leaves=6),
                                 max_size=3),
    },
)


def _to_json(spec: dict) -> dict:
    obj = {k: v for k, v in spec.items() if k not in ("pair", "extra")}
    if "pair" in spec:
        q, a, key = spec["pair"]
        obj[key], obj["output"] = q, a
    obj.update(spec.get("extra", {}))
    return obj


def _expected(spec: dict, line: int) -> HistoryItem:
    pair = spec.get("pair")
    rid = spec.get("id")
    rating = spec.get("rating")
    return HistoryItem(
        text=spec["text"], id=f"line-{line}" if rid is None else str(rid), line=line,
        time=spec.get("time"), title=spec.get("title"), label=spec.get("label"),
        rating=None if rating is None else float(rating),
        prompt=pair[0] if pair else None, output=pair[1] if pair else None, extra=spec.get("extra", {}),
    )


_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(specs=st.lists(_item, min_size=1, max_size=15), ascii_only=st.booleans(), gz=st.booleans(),
       keep_last=st.integers(1, 20))
def test_property_valid_items_round_trip(tmp_path, specs, ascii_only, gz, keep_last):
    data = "".join(json.dumps(_to_json(s), ensure_ascii=ascii_only) + "\n" for s in specs).encode("utf-8")
    p = tmp_path / "h.jsonl"
    p.write_bytes(gzip.compress(data) if gz else data)
    expected = [_expected(s, i) for i, s in enumerate(specs, 1)]
    assert list(load_history(p, keep_last=len(specs)).items) == sorted(expected, key=lambda it: (it.time, it.line)) \
        if all(it.time is not None for it in expected) else expected
    h = load_history(p, keep_last=keep_last)
    kept = expected[-keep_last:]
    if all(it.time is not None for it in kept):
        kept = sorted(kept, key=lambda it: (it.time, it.line))
    assert h.items == kept
    assert h.n_items == len(specs)
    assert h.rating_count == sum(1 for it in expected if it.rating is not None)
    total = 0.0
    for it in expected:  # same order of accumulation as load_history: exact equality
        total += it.rating if it.rating is not None else 0.0
    assert h.rating_sum == total or (math.isnan(total) and math.isnan(h.rating_sum))
    assert sum(h.label_counts.values()) == sum(1 for it in expected if it.label is not None)
    assert h.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def _only_input_errors(p: Path, **kw) -> None:
    try:
        h = load_history(p, **kw)
    except InputError as e:
        assert str(e).isprintable(), str(e)  # one line, nothing that breaks a terminal
        return
    assert h.n_items >= 1


@_settings
@given(data=st.binary(max_size=300), gz=st.booleans())
def test_property_arbitrary_bytes_only_input_error(tmp_path, data, gz):
    p = tmp_path / "h.jsonl"
    p.write_bytes(gzip.compress(data) if gz else data)
    _only_input_errors(p, max_line_bytes=64)


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)
_json_obj = st.dictionaries(
    st.one_of(st.sampled_from(sorted(history_mod.KNOWN_FIELDS)), st.text(max_size=6)), _json_value, max_size=6)


@_settings
@given(values=st.lists(st.one_of(_json_obj, _json_value, st.text(max_size=30)), min_size=0, max_size=8),
       blank=st.lists(st.booleans(), max_size=8))
def test_property_arbitrary_json_lines_only_input_error(tmp_path, values, blank):
    lines = []
    for i, v in enumerate(values):
        if i < len(blank) and blank[i]:
            lines.append("")
        lines.append(v.replace("\n", " ") if isinstance(v, str) else json.dumps(v))
    p = tmp_path / "h.jsonl"
    p.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    _only_input_errors(p)
