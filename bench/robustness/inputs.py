"""(a) big histories and (b) every bad input, through the real `p2p-edge` CLI."""


from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
from bench.robustness.common import MIB, one_line, run_cli, snapshot, write_history




# ------------------------------------------------------------------------------------------- (a) big history


def big_history(tmp: Path, env: dict, sizes: list[int], log) -> list[dict]:
    rows = []
    for n in sizes:
        hist = tmp / f"big-{n}.jsonl"
        t = time.perf_counter()
        write_history(hist, n)
        gen_s = time.perf_counter() - t
        r = run_cli(["personalize", hist, "--no-summary", "--json", "--threads", "1", "--out", tmp / f"big-out-{n}"], env)
        row = {"items": n, "file_mib": round(hist.stat().st_size / MIB, 1), "generate_s": round(gen_s, 1),
               "rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}
        if r["rc"] == 0:
            doc = json.loads(r["stdout"])
            prof = json.loads(Path(doc["profile"]).read_text())
            row.update(read_ms=doc["timings_ms"]["read"], total_ms=doc["timings_ms"]["total"],
                       n_items=doc["n_items"], n_used=prof["history"]["n_used"])
        else:
            row["error"] = one_line(r["stderr"], tmp)
        hist.unlink()
        log(f"  {n:>9,} items: rc {r['rc']}, {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB")
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------- (b) bad input


def bad_input_cases(tmp: Path, hyp: Path, base_spec) -> list[tuple[str, list, str | None]]:
    """(name, argv, stdin): each must fail with one line and leave the previous output untouched."""
    from p2p_edge.gguf import write_adapter
    from p2p_edge.hypernet import Hypernet

    d = tmp / "bad"
    d.mkdir()
    good = b'{"id": "a", "text": "first"}\n'

    def hist(name: str, body: bytes) -> Path:
        p = d / name
        p.write_bytes(body)
        return p

    unreadable = hist("unreadable.jsonl", good)
    os.chmod(unreadable, 0)
    (d / "adir.jsonl").mkdir()
    import gzip

    gz = gzip.compress(good * 2000)
    cases = [
        ("malformed JSON", hist("malformed.jsonl", good + b'{"text": "x",}\n')),
        ("wrong type (rating is a string)", hist("wrongtype.jsonl", good + b'{"text": "x", "rating": "five"}\n')),
        ("missing text", hist("missing.jsonl", good + b'{"id": "b", "title": "t"}\n')),
        ("text not a string", hist("textint.jsonl", b'{"text": 17}\n')),
        ("line is not an object", hist("array.jsonl", b'["text", "a"]\n')),
        ("empty file", hist("empty.jsonl", b"")),
        ("only blank lines", hist("blank.jsonl", b"\n  \n\n")),
        ("invalid UTF-8", hist("latin1.jsonl", good + b'{"text": "caf\xe9"}\n')),
        ("UTF-16 file", hist("utf16.jsonl", '{"text": "hi"}\n'.encode("utf-16"))),
        ("binary file (NUL bytes)", hist("binary.jsonl", b"\x00\x01\x02GGUF" * 100)),
        ("huge line (2 MiB)", hist("huge.jsonl", good + b'{"text": "' + b"x" * (2 * MIB) + b'"}\n')),
        ("truncated gzip", hist("trunc.jsonl.gz", gz[: len(gz) // 2])),
        ("directory instead of file", d / "adir.jsonl"),
        ("missing file", d / "nope.jsonl"),
        ("unreadable file (mode 0000)", unreadable),
    ]
    out = [(name, ["personalize", p, "--hypernet", hyp, "--json"], None) for name, p in cases]

    # hypernets: truncated, corrupted in place, card for another base model, no card
    onnx = hyp.read_bytes()
    card = json.loads(hyp.with_suffix(".json").read_text())

    def hypernet(name: str, data: bytes, card_doc: dict | None) -> Path:
        sub = d / name
        sub.mkdir()
        (sub / "hypernet.onnx").write_bytes(data)
        if card_doc is not None:
            (sub / "hypernet.json").write_text(json.dumps(card_doc))
        return sub / "hypernet.onnx"

    flipped = bytearray(onnx)
    flipped[len(flipped) // 2: len(flipped) // 2 + 64] = bytes(64)
    other = json.loads(json.dumps(card))
    other["base_model"].update(sha256="f" * 64, name="SomeOtherModel-7B")
    no_sha = {k: v for k, v in card.items() if k != "onnx_sha256"}
    hn_cases = [
        ("hypernet ONNX truncated", hypernet("trunc", onnx[: len(onnx) // 3], card)),
        ("hypernet ONNX corrupted (bytes zeroed)", hypernet("flip", bytes(flipped), card)),
        ("hypernet ONNX truncated, card without sha256", hypernet("trunc-nosha", onnx[: len(onnx) // 3], no_sha)),
        ("hypernet card for another base model", hypernet("other", onnx, other)),
        ("hypernet without its card", hypernet("nocard", onnx, None)),
    ]
    ok_hist = hist("ok.jsonl", good * 3)
    out += [(name, ["personalize", ok_hist, "--hypernet", p, "--json"], None) for name, p in hn_cases]
    out.append(("base model GGUF truncated", ["personalize", ok_hist, "--hypernet", hyp, "--json", "--base-model",
                                              _truncated_base(d)], None))

    # adapters given to chat: for another base model, truncated, empty, not GGUF
    e = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    lora = Hypernet(hyp).generate(e / np.linalg.norm(e))
    real = write_adapter(d / "real.gguf", lora, base_spec)
    other_base = dataclasses.replace(base_spec, name="OtherModel-135M", sha256="1" * 64)
    adapters = [
        ("adapter for a different base model", write_adapter(d / "other-base.gguf", lora, other_base)),
        ("adapter truncated", hist("trunc.gguf", real.read_bytes()[: real.stat().st_size // 2])),
        ("adapter truncated in the header", hist("trunc-header.gguf", real.read_bytes()[:300])),
        ("adapter empty file", hist("empty.gguf", b"")),
        ("adapter not GGUF", hist("text.gguf", b"hello, not a gguf file\n" * 10)),
        ("adapter missing", d / "missing.gguf"),
    ]
    out += [(name, ["chat", "--adapter", p, "--max-tokens", "4"], "hello\n") for name, p in adapters]
    return out


def _truncated_base(d: Path) -> Path:
    from p2p_edge.paths import default_base_model

    src = default_base_model()
    p = d / "base-truncated.gguf"
    with open(src, "rb") as f, open(p, "wb") as g:
        g.write(f.read(src.stat().st_size // 2))
    return p


def bad_inputs(tmp: Path, env: dict, hyp: Path, base_spec, log) -> list[dict]:
    previous = tmp / "previous"
    rows = []
    for name, args, stdin in bad_input_cases(tmp, hyp, base_spec):
        as_root = name.startswith("unreadable") and os.geteuid() == 0  # root reads it: it would overwrite
        if args[0] == "personalize":
            args = [*args, "--threads", "1", "--out", tmp / "root-out" if as_root else previous]
        before = snapshot(previous)
        r = run_cli(args, env, stdin=stdin, timeout=300)
        n_lines = len([x for x in r["stderr"].splitlines() if x.strip()])
        row = {"case": name, "command": args[0], "rc": r["rc"], "saw": one_line(r["stderr"], tmp) or "(nothing)",
               "stderr_lines": n_lines, "traceback": "Traceback" in r["stderr"],
               "previous_output_intact": None if as_root else snapshot(previous) == before}
        if as_root:
            row["note"] = ("NOT EXERCISED: this ran as root, and root can read a mode-0000 file, so personalize "
                           "succeeded; the one-line `permission denied (cannot read the file)` error is tested with a "
                           "simulated PermissionError in tests/test_history.py")
        log(f"  {name}: rc {r['rc']}: {row['saw'][:110]}")
        rows.append(row)
    return rows
