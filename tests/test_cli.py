"""The `p2p-edge` command line, in-process (typer's CliRunner) and as real processes (`python -m p2p_edge.cli`,
the `p2p-edge` console script): outputs and their privacy, the summary cache, one-line errors that leave existing
outputs untouched, the chat REPL on piped stdin, and a client that never imports torch.

In-process runs share the session's llama.cpp model (the product keeps one per process as well) by patching
`p2p_edge.runtime.LocalLLM`; the subprocess runs load everything for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_HISTORY, ROOT
from p2p_edge.cli import app

SUMMARY = "Plays acoustic guitar at open mics and bakes sourdough with a starter named Gerald."
CONSOLE_SCRIPT = Path(sys.executable).parent / "p2p-edge"
TIMING_KEYS = {"encode", "hypernet", "write", "total"}
ONE_LINE_ERROR = re.compile(r"error: \S.*")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def sha256(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), mode(p)) for p in sorted(d.iterdir())} if d.exists() else {}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def subprocess_env(home: Path, encoder_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(P2P_EDGE_HOME=str(home), P2P_EDGE_ENCODER=str(encoder_dir), HF_HUB_OFFLINE="1")
    env.pop("P2P_EDGE_BASE_MODEL", None)
    return env


def run_py(args, env, *, stdin: str | None = None, pre=(), timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *pre, "-m", "p2p_edge.cli", *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(stderr: str, *needles: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert ONE_LINE_ERROR.fullmatch(lines[0]), lines[0]
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def shared_llm(llm, use_encoder, monkeypatch):
    import p2p_edge.runtime as runtime

    monkeypatch.setattr(runtime, "LocalLLM", lambda model_path=None, **kw: llm)
    llm.use(None)
    yield llm
    llm.use(None)


@pytest.fixture(scope="module")
def hyp(random_hypernet_path) -> Path:
    return random_hypernet_path


def check_outputs(out: Path, doc: dict, base_spec, encoder_dir: Path, history: Path = EXAMPLE_HISTORY,
                  dir_mode: int = 0o700) -> dict:
    """The one JSON object printed by --json, and the files it names."""
    from p2p_edge.gguf import read_adapter

    assert {"adapter", "profile", "timings_ms"} <= set(doc)
    adapter, prof_path = Path(doc["adapter"]), Path(doc["profile"])
    assert adapter == out / "adapter.gguf" and prof_path == out / "profile.json"
    assert adapter.is_file() and prof_path.is_file()
    assert mode(adapter) == 0o600 and mode(prof_path) == 0o600 and mode(out) == dir_mode
    t = doc["timings_ms"]
    assert TIMING_KEYS <= set(t) and all(isinstance(v, (int, float)) and v >= 0 for v in t.values())
    assert t["total"] + 0.1 >= t["encode"] + t["hypernet"] + t["write"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    prof = json.loads(prof_path.read_text(encoding="utf-8"))
    ids = [json.loads(line)["id"] for line in history.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert set(prof["retrieved_ids"]) <= set(ids)
    assert prof["retrieved_ids"] == doc.get("retrieved_ids", prof["retrieved_ids"])
    assert prof["embedding_model"] == json.loads((encoder_dir / "encoder.json").read_text())["name"]
    assert prof["hypernet"]["id"] == "random-test-fixture"
    assert prof["base_model"]["sha256"] == base_spec.sha256
    assert prof["history"]["sha256"] == sha256(history)
    assert prof["history"]["n_items"] == len(ids)
    assert TIMING_KEYS <= set(prof["timings_ms"])
    assert "summary" in prof and prof["summary_source"] == doc.get("summary_source", prof["summary_source"])

    lora, meta = read_adapter(adapter, base_spec)  # a valid adapter for this base, naming its origin
    assert meta["hypernet"] == "random-test-fixture" and meta["history_sha256"] == sha256(history)
    assert meta["chat_scale"] == "1"   # the card has no chat_scale: chat uses the strength it was trained at
    return prof


# ------------------------------------------------------------------------------------------ personalize (ok)


def test_personalize_json_in_process(shared_llm, hyp, tmp_path, base_spec, encoder_dir):
    out = tmp_path / "out"
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json", "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and len(r.stdout.splitlines()) == 1
    doc = json.loads(r.stdout)
    prof = check_outputs(out, doc, base_spec, encoder_dir)
    assert prof["summary"] == SUMMARY and prof["summary_source"] == doc["summary_source"] == "given"
    assert len(prof["retrieved_ids"]) == 2  # the card's top_k
    assert shared_llm._loaded == []  # the load check freed its adapter


def test_personalize_twice_overwrites_privately(shared_llm, hyp, tmp_path, base_spec, encoder_dir):
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    (out / "adapter.gguf").write_bytes(b"old")
    os.chmod(out / "adapter.gguf", 0o644)
    os.chmod(out, 0o755)
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json", "--out", out)
    assert r.exit_code == 0, r.output
    # files are private; a directory the user made keeps the mode the user gave it (--out ~/Desktop is not chmodded)
    check_outputs(out, json.loads(r.stdout), base_spec, encoder_dir, dir_mode=0o755)


def test_summary_from_file(shared_llm, hyp, tmp_path):
    f = tmp_path / "summary.txt"
    f.write_text("  Loves bread and DADGAD tunings.\n\n", encoding="utf-8")
    out = tmp_path / "out"
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", f, "--json", "--out", out)
    assert r.exit_code == 0, r.output
    prof = json.loads((out / "profile.json").read_text())
    assert prof["summary"] == "Loves bread and DADGAD tunings." and prof["summary_source"] == "given"


def test_no_summary_uses_the_most_recent_items(shared_llm, hyp, tmp_path):
    out = tmp_path / "out"
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--no-summary", "--json", "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    prof = json.loads((out / "profile.json").read_text())
    assert prof["summary"] is None and prof["summary_source"] == doc["summary_source"] == "none"
    items = [json.loads(line) for line in EXAMPLE_HISTORY.read_text().splitlines()]
    newest = [it["id"] for it in sorted(items, key=lambda it: it["time"])[-2:]]
    assert prof["retrieved_ids"] == doc["retrieved_ids"] == newest


def test_top_k_and_dtype(shared_llm, hyp, tmp_path, base_spec):
    from p2p_edge.gguf import read_adapter

    r16 = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json",
                 "--out", tmp_path / "a", "--top-k", "5")
    r32 = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json",
                 "--out", tmp_path / "b", "--top-k", "0", "--dtype", "f32")
    assert r16.exit_code == 0 and r32.exit_code == 0, (r16.output, r32.output)
    d16, d32 = json.loads(r16.stdout), json.loads(r32.stdout)
    assert len(d16["retrieved_ids"]) == 5 and d32["retrieved_ids"] == []
    assert 1.9 < d32["adapter_bytes"] / d16["adapter_bytes"] < 2.1
    assert d32["adapter_bytes"] == (tmp_path / "b" / "adapter.gguf").stat().st_size
    read_adapter(tmp_path / "b" / "adapter.gguf", base_spec)


def test_human_readable_output(shared_llm, hyp, tmp_path):
    out = tmp_path / "out"
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--out", out)
    assert r.exit_code == 0, r.output
    assert "Personalized from 34 items" in r.stdout and str(out / "adapter.gguf") in r.stdout.replace("\n", "")
    assert "p2p-edge chat --adapter" in r.stdout


def test_default_output_dir_is_per_user_in_the_data_dir(shared_llm, hyp, tmp_path):
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json", "--user", "alice")
    assert r.exit_code == 0, r.output
    home = Path(os.environ["P2P_EDGE_HOME"])
    assert Path(json.loads(r.stdout)["adapter"]) == home / "users" / "alice" / "adapter.gguf"


@pytest.fixture(scope="module")
def subprocess_run(hyp, encoder_dir, tmp_path_factory):
    """`python -X importtime -m p2p_edge.cli personalize ... --json`: the real entry point, every model loaded."""
    d = tmp_path_factory.mktemp("sub")
    out = d / "out"
    r = run_py(["personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json", "--out", out],
               subprocess_env(d / "home", encoder_dir), pre=["-X", "importtime"])
    return r, out


def test_personalize_subprocess(subprocess_run, base_spec, encoder_dir):
    r, out = subprocess_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.splitlines()) == 1
    prof = check_outputs(out, json.loads(r.stdout), base_spec, encoder_dir)
    assert prof["summary"] == SUMMARY
    noise = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert noise == [], noise  # llama.cpp / onnxruntime print nothing on a normal run


def test_personalize_subprocess_never_imports_torch(subprocess_run):
    r, _ = subprocess_run
    assert r.returncode == 0
    mods = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert {"p2p_edge.personalize", "onnxruntime", "llama_cpp"} <= mods  # importtime did record the run
    heavy = sorted(m for m in mods if m.split(".")[0] in ("torch", "transformers", "sentence_transformers"))
    assert heavy == []


def test_client_modules_do_not_import_torch():
    code = ("import sys, p2p_edge.cli, p2p_edge.personalize, p2p_edge.chat, p2p_edge.runtime, p2p_edge.encoder, "
            "p2p_edge.hypernet, p2p_edge.gguf, p2p_edge.profile, p2p_edge.history; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', "
            "'sentence_transformers', 'optimum')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.slow
def test_generated_summary_then_cache_hit(hyp, encoder_dir, tmp_path, base_spec, shared_llm, monkeypatch):
    """Without --summary the local LLM writes one (greedy, in a real process); a second run (here in-process, so
    in another process than the writer) gets the same summary from the on-disk cache."""
    hist = tmp_path / "short.jsonl"
    hist.write_bytes(b"".join(EXAMPLE_HISTORY.read_bytes().splitlines(keepends=True)[:3]))
    env = subprocess_env(tmp_path / "home", encoder_dir)
    common = [hist, "--hypernet", hyp, "--json", "--threads", "1"]
    r1 = run_py(["personalize", *common, "--out", tmp_path / "o1"], env)
    assert r1.returncode == 0, r1.stderr
    d1 = json.loads(r1.stdout)
    p1 = check_outputs(tmp_path / "o1", d1, base_spec, encoder_dir, history=hist)
    assert d1["summary_source"] == p1["summary_source"] == "generated"
    assert p1["summary"] and p1["summary"] != "(no summary)" and "\n" not in p1["summary"]
    (cached,) = list((tmp_path / "home" / "cache" / "summaries").glob("*.json"))
    assert mode(cached) == 0o600 and json.loads(cached.read_text())["summary"] == p1["summary"]

    # The second run, in this process (another process than the one that wrote the cache):
    monkeypatch.setenv("P2P_EDGE_HOME", str(tmp_path / "home"))
    r2 = invoke("personalize", *common, "--out", tmp_path / "o2")
    assert r2.exit_code == 0, r2.output
    d2 = json.loads(r2.stdout)
    p2 = json.loads((tmp_path / "o2" / "profile.json").read_text())
    assert d2["summary_source"] == p2["summary_source"] == "cache"
    assert p2["summary"] == p1["summary"] and p2["retrieved_ids"] == p1["retrieved_ids"]
    assert d2["timings_ms"]["summary"] < d1["timings_ms"]["summary"] / 5
    # same summary -> same profile -> same LoRA: the adapter is byte-identical
    assert (tmp_path / "o2" / "adapter.gguf").read_bytes() == (tmp_path / "o1" / "adapter.gguf").read_bytes()


# ---------------------------------------------------------------------------------------- personalize (errors)


def _history(tmp_path, body: bytes) -> Path:
    p = tmp_path / "hist.jsonl"
    p.write_bytes(body)
    return p


GOOD = b'{"id": "a", "text": "first"}\n'


def case_malformed_json(tmp_path, hyp):
    p = _history(tmp_path, GOOD + b'{"text": "x",}\n')
    return [p, "--hypernet", hyp], [f"{p}:2:", "invalid JSON"]


def case_missing_text(tmp_path, hyp):
    p = _history(tmp_path, GOOD + b'{"id": "b", "title": "t"}\n')
    return [p, "--hypernet", hyp], [f"{p}:2:", "field 'text'", "missing"]


def case_wrong_type(tmp_path, hyp):
    p = _history(tmp_path, GOOD + GOOD + b'{"text": "x", "rating": "five"}\n')
    return [p, "--hypernet", hyp], [f"{p}:3:", "field 'rating'"]


def case_text_not_a_string(tmp_path, hyp):
    p = _history(tmp_path, b'{"text": 17}\n')
    return [p, "--hypernet", hyp], [f"{p}:1:", "field 'text'", "int"]


def case_empty_file(tmp_path, hyp):
    p = _history(tmp_path, b"")
    return [p, "--hypernet", hyp], [str(p), "empty"]


def case_invalid_utf8(tmp_path, hyp):
    p = _history(tmp_path, GOOD + b'{"text": "caf\xe9"}\n')
    return [p, "--hypernet", hyp], [f"{p}:2:", "UTF-8"]


def case_directory(tmp_path, hyp):
    p = tmp_path / "adir.jsonl"
    p.mkdir()
    return [p, "--hypernet", hyp], [str(p), "directory"]


def case_missing_file(tmp_path, hyp):
    p = tmp_path / "nope.jsonl"
    return [p, "--hypernet", hyp], [str(p), "not found"]


def case_missing_hypernet(tmp_path, hyp):
    h = tmp_path / "no-such-hypernet.onnx"
    return [EXAMPLE_HISTORY, "--hypernet", h], [str(h), "not found"]


def case_hypernet_for_another_base(tmp_path, hyp):
    d = tmp_path / "hn"
    d.mkdir()
    onnx = Path(shutil.copy(hyp, d / "hypernet.onnx"))
    card = json.loads(hyp.with_suffix(".json").read_text())
    card["base_model"]["sha256"] = "f" * 64
    card["base_model"]["name"] = "SomeOtherModel-7B"
    (d / "hypernet.json").write_text(json.dumps(card))
    return [EXAMPLE_HISTORY, "--hypernet", onnx], [str(d / "hypernet.json"), "SomeOtherModel-7B"]


def case_summary_and_no_summary(tmp_path, hyp):
    return [EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", "x", "--no-summary"], ["--summary", "--no-summary"]


def case_dtype_f8(tmp_path, hyp):
    return [EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", "x", "--dtype", "f8"], ["--dtype", "'f8'"]


def case_empty_summary_file(tmp_path, hyp):
    f = tmp_path / "empty-summary.txt"
    f.write_text("  \n")
    return [EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", f], [str(f), "empty"]


BAD_CASES = [case_malformed_json, case_missing_text, case_wrong_type, case_text_not_a_string, case_empty_file,
             case_invalid_utf8, case_directory, case_missing_file, case_missing_hypernet,
             case_hypernet_for_another_base, case_summary_and_no_summary, case_dtype_f8, case_empty_summary_file]


@pytest.fixture
def previous_output(tmp_path) -> Path:
    """An output dir holding a user's earlier adapter and profile."""
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    (out / "adapter.gguf").write_bytes(b"GGUF previous adapter " + bytes(range(256)))
    (out / "profile.json").write_text('{"summary": "previous"}\n')
    for p in out.iterdir():
        os.chmod(p, 0o600)
    return out


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.__name__[5:])
def test_bad_input_is_one_line_and_writes_nothing(shared_llm, hyp, tmp_path, previous_output, case):
    args, needles = case(tmp_path, hyp)
    before = snapshot(previous_output)
    r = invoke("personalize", *args, "--json", "--out", previous_output)
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output  # an exit, not an escaped exception
    assert r.stdout == ""
    assert_one_line_error(r.stderr, *needles)
    assert snapshot(previous_output) == before  # the earlier adapter and profile are byte-identical


@pytest.mark.parametrize("case", [case_malformed_json, case_hypernet_for_another_base, case_missing_file],
                         ids=lambda c: c.__name__[5:])
def test_bad_input_does_not_create_the_output_dir(shared_llm, hyp, tmp_path, case):
    args, _ = case(tmp_path, hyp)
    fresh = tmp_path / "fresh-out"
    r = invoke("personalize", *args, "--json", "--out", fresh)
    assert r.exit_code != 0 and not fresh.exists()


def test_console_script_bad_input(hyp, encoder_dir, tmp_path, previous_output):
    """A real process: stderr is exactly one line (no warnings from the libraries either), exit code non-zero."""
    if not CONSOLE_SCRIPT.is_file():
        pytest.skip("p2p-edge console script not installed")
    args, needles = case_malformed_json(tmp_path, hyp)
    before = snapshot(previous_output)
    r = subprocess.run([str(CONSOLE_SCRIPT), "personalize", *map(str, args), "--out", str(previous_output)],
                       cwd=ROOT, env=subprocess_env(tmp_path / "home", encoder_dir), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and r.stdout == ""
    assert_one_line_error(r.stderr, *needles)
    assert snapshot(previous_output) == before


def test_debug_shows_the_traceback(encoder_dir, tmp_path):
    env = subprocess_env(tmp_path / "home", encoder_dir)
    args = ["personalize", EXAMPLE_HISTORY, "--summary", "x", "--dtype", "f8"]
    debug = run_py(["--debug", *args], env)  # (the same without --debug: test_bad_input_is_one_line...[dtype_f8])
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "P2PError" in debug.stderr and "--dtype must be f16 or f32" in debug.stderr


def test_debug_in_process_raises_the_exception(shared_llm, hyp, tmp_path):
    from p2p_edge.errors import InputError

    args, _ = case_missing_text(tmp_path, hyp)
    r = invoke("--debug", "personalize", *args, "--json", "--out", tmp_path / "o")
    assert r.exit_code != 0 and isinstance(r.exception, InputError)
    r = invoke("personalize", *args, "--json", "--out", tmp_path / "o")  # --debug does not stick
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit)


# -------------------------------------------------------------------------------------------------------- info


def test_info_in_process(use_encoder, tmp_path):
    r = invoke("info")
    assert r.exit_code == 0, r.output
    rows = {line[:11].strip(): line[12:].removesuffix("  (missing)") for line in r.stdout.splitlines()}
    assert set(rows) == {"base model", "encoder", "hypernet", "data dir", "cache dir", "hypernet id", "limits",
                         "token prior", "its limits"}
    assert rows["hypernet id"].startswith("p2p-smollm2-135m") and "chat" in rows["limits"].lower()   # the card's own words
    assert rows["token prior"].endswith("(beta 0.3, on by default)") and "not learnt" in rows["its limits"]
    assert rows["encoder"] == str(use_encoder)
    assert rows["data dir"] == os.environ["P2P_EDGE_HOME"]
    assert "base model  " in r.stdout and "(missing)" not in r.stdout.split("\n")[0]


def test_info_console_script(encoder_dir, tmp_path):
    if not CONSOLE_SCRIPT.is_file():
        pytest.skip("p2p-edge console script not installed")
    home = tmp_path / "home"
    r = subprocess.run([str(CONSOLE_SCRIPT), "info"], env=subprocess_env(home, encoder_dir), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"encoder     {encoder_dir}\n" in r.stdout and f"data dir    {home}" in r.stdout
    assert r.stderr == ""


def test_a_reader_that_goes_away_is_not_an_error(encoder_dir, tmp_path):
    # `p2p-edge info | head -1`: the pipe closes before the command writes; no "error:" line, a SIGPIPE-style exit
    if not CONSOLE_SCRIPT.is_file():
        pytest.skip("p2p-edge console script not installed")
    p = subprocess.Popen([str(CONSOLE_SCRIPT), "info"], env=subprocess_env(tmp_path / "home", encoder_dir),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141, err
    assert err == ""


def test_no_arguments_shows_help():
    r = invoke()
    assert "personalize" in r.output and "chat" in r.output and "info" in r.output


# -------------------------------------------------------------------------------------------------------- chat


@pytest.fixture(scope="module")
def adapter_file(hyp, base_spec, tmp_path_factory) -> Path:
    import numpy as np

    from p2p_edge.gguf import write_adapter
    from p2p_edge.hypernet import Hypernet

    e = np.random.default_rng(3).standard_normal(384).astype(np.float32)
    lora = Hypernet(hyp).generate(e / np.linalg.norm(e))
    return write_adapter(tmp_path_factory.mktemp("chat") / "adapter.gguf", lora, base_spec)


def test_chat_repl_on_piped_stdin(adapter_file, encoder_dir, tmp_path):
    stdin = "hello\n/adapter off\n/adapter on\n/reset\n/adapter sideways\n/bogus\n/help\n/quit\nafter quit\n"
    r = run_py(["chat", "--adapter", adapter_file, "--max-tokens", "8", "--threads", "1", "--temperature", "0"],
               subprocess_env(tmp_path / "home", encoder_dir), stdin=stdin)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "adapter on" in out.splitlines()[0]
    for ack in ("(adapter off)", "(adapter on)", "(conversation cleared)", "usage: /adapter on|off",
                "unknown command /bogus", "commands: /adapter on|off"):
        assert ack in out, ack
    assert out.index("(adapter off)") < out.index("(adapter on)") < out.index("(conversation cleared)")
    assert out.count("bot> ") == 1  # one question before /quit; nothing after it is read
    assert out.split("bot> ")[1].split("you> ")[0].strip()  # it did answer something
    assert r.stderr == ""


def test_chat_ends_cleanly_at_eof_with_the_base_model(shared_llm):
    r = CliRunner().invoke(app, ["chat", "--no-adapter", "--max-tokens", "4"], input="/adapter on\n")
    assert r.exit_code == 0, r.output
    assert "adapter off (base model)" in r.stdout and "(no adapter loaded" in r.stdout
    assert r.stdout.endswith("you> \n") and r.stderr == ""


def test_chat_with_history_personalizes_first(hyp, encoder_dir, tmp_path, base_spec):
    from p2p_edge.paths import PROMPTS_DIR
    from p2p_edge.profile import SummaryCache

    home = tmp_path / "home"
    # Seed the summary cache (as an earlier `personalize` would have): this test is about chat's flow, and a
    # generated summary of the 34-item example costs 10-30 s on a busy 2-core machine.
    cache = SummaryCache(home / "cache")
    key = cache.key(sha256(EXAMPLE_HISTORY), base_spec.sha256, (PROMPTS_DIR / "summary.txt").read_text("utf-8"))
    cache.put(key, SUMMARY, sha256(EXAMPLE_HISTORY))
    r = run_py(["chat", "--history", EXAMPLE_HISTORY, "--hypernet", hyp, "--max-tokens", "4", "--threads", "1"],
               subprocess_env(home, encoder_dir), stdin="/adapter off\n/adapter on\n")
    assert r.returncode == 0, r.stderr
    adapter = home / "users" / "history" / "adapter.gguf"
    assert f"personalized from 34 items -> {adapter}" in r.stdout
    assert "adapter on" in r.stdout and "(adapter off)" in r.stdout and "(adapter on)" in r.stdout
    assert mode(adapter) == 0o600
    prof = json.loads((adapter.parent / "profile.json").read_text())
    assert prof["summary_source"] == "cache" and prof["summary"] == SUMMARY


@pytest.mark.parametrize("extra, needles", [
    (["--no-adapter"], ["at most one of", "--no-adapter"]),
    (["--history", str(EXAMPLE_HISTORY)], ["at most one of", "--history"]),
])
def test_chat_conflicting_options(tmp_path, extra, needles):
    r = invoke("chat", "--adapter", tmp_path / "a.gguf", *extra)
    assert r.exit_code != 0 and r.stdout == ""
    assert_one_line_error(r.stderr, *needles)


@pytest.mark.parametrize("args, needle", [
    (["--summary", "likes bread"], "go with --history"),
    (["--no-summary"], "go with --history"),
    (["--history", str(EXAMPLE_HISTORY), "--summary", "x", "--no-summary"], "exclude each other"),
])
def test_chat_summary_options_need_history(args, needle):
    r = invoke("chat", *args)
    assert r.exit_code != 0
    assert_one_line_error(r.stderr, needle)


def test_chat_history_with_given_summary(shared_llm, hyp, tmp_path):
    r = CliRunner().invoke(app, ["chat", "--history", str(EXAMPLE_HISTORY), "--hypernet", str(hyp), "--summary",
                                 "Bakes sourdough.", "--max-tokens", "4"], input="/quit\n")
    assert r.exit_code == 0, r.output
    from p2p_edge.personalize import user_dir

    prof = json.loads((user_dir("history") / "profile.json").read_text())
    assert prof["summary_source"] == "given" and prof["summary"] == "Bakes sourdough."


def compare_blocks(out: str) -> list[tuple[str, str]]:
    """(label, reply) of each block /compare printed."""
    parts = out.split("--- ")[1:]
    return [(p.split(" ---")[0], p.split(" ---\n", 1)[1].split("you> ")[0].strip()) for p in parts]


@pytest.mark.slow
def test_chat_compare_shows_base_and_personal_and_scale_sets_the_strength(shared_llm, adapter_file):
    stdin = ("/compare Name a colour.\n/scale 9\n/scale x\n/scale 1.5\n/compare Name a colour.\n/compare\n"
             "/adapter off\n/compare Name a colour.\n")
    r = CliRunner().invoke(app, ["chat", "--adapter", str(adapter_file), "--max-tokens", "6", "--scale", "0"],
                           input=stdin)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "adapter on (scale 0)" in out.splitlines()[0]
    blocks = compare_blocks(out)
    assert [b[0] for b in blocks] == ["base", "personal (scale 0)", "base", "personal (scale 1.5)",
                                      "base", "personal (scale 1.5)"]
    assert blocks[0][1] and blocks[0][1] == blocks[1][1]   # scale 0 is the base model
    assert blocks[0][1] == blocks[2][1] == blocks[4][1]    # greedy, and a compare leaves no state behind
    assert out.count("usage: /scale X") == 2 and "(adapter scale 1.5)" in out and "usage: /compare PROMPT" in out
    assert out.count("bot> ") == 0   # /compare is a side query: the conversation got no turn


def test_chat_scale_default_comes_from_the_adapter_and_is_checked(tmp_path, adapter_file, base_spec):
    from p2p_edge.gguf import read_adapter, write_adapter
    from p2p_edge.chat import adapter_scale

    assert adapter_scale(adapter_file) == 1.0   # written without a chat_scale
    lora, _ = read_adapter(adapter_file)
    p = write_adapter(tmp_path / "a.gguf", lora, base_spec, metadata={"chat_scale": "0.75"})
    assert adapter_scale(p) == 0.75
    r = invoke("chat", "--adapter", p, "--scale", "7")
    assert r.exit_code != 0 and "--scale" in r.stderr


def test_chat_with_a_corrupt_adapter_is_one_line(shared_llm, tmp_path, adapter_file):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(adapter_file.read_bytes()[:5000])
    r = invoke("chat", "--adapter", bad)
    assert r.exit_code != 0
    assert_one_line_error(r.stderr, str(bad))
    r = invoke("chat", "--adapter", tmp_path / "missing.gguf")
    assert r.exit_code != 0
    assert_one_line_error(r.stderr, str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), ImportError("initialization failed")])
def test_ctrl_c_is_interrupted_even_inside_a_c_extension_import(exc, capsys):
    """Ctrl-C while a pybind11 module (onnxruntime) initialises arrives as ImportError("initialization failed")
    caused by the KeyboardInterrupt: still "interrupted" and exit 130, not an "unexpected ImportError"."""
    import typer

    from p2p_edge.cli import friendly_errors

    @friendly_errors
    def command():
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        raise exc from KeyboardInterrupt()

    with pytest.raises(typer.Exit) as e:
        command()
    assert e.value.exit_code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_an_import_error_of_its_own_is_still_unexpected(capsys):
    import typer

    from p2p_edge.cli import friendly_errors

    @friendly_errors
    def command():
        raise ImportError("no module named x")

    with pytest.raises(typer.Exit) as e:
        command()
    assert e.value.exit_code == 1 and "unexpected ImportError: no module named x" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the token prior
@pytest.fixture
def toy_population(tmp_path, base_spec, monkeypatch):
    """A population table for the real vocabulary (every token equally likely), made the default one."""
    import numpy as np

    import p2p_edge.token_prior as tp

    def make(default_on: bool):
        pop = tp.Population.from_counts(np.zeros(49152), beta=0.5, mu=100.0,
                                        meta={"id": "toy", "base_sha256": base_spec.sha256, "default_on": default_on})
        path = pop.save(tmp_path / f"pop_{default_on}.npz")
        monkeypatch.setattr(tp, "DEFAULT_POPULATION", path)
        return path

    return make


def test_personalize_writes_the_token_prior_beside_the_adapter(shared_llm, hyp, tmp_path, toy_population):
    from p2p_edge.chat import personal_prior
    from p2p_edge.token_prior import TokenPrior

    toy_population(True)
    out = tmp_path / "out"
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json", "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    prior_file = out / "token_prior.npz"
    assert doc["token_prior"] == str(prior_file) and mode(prior_file) == 0o600 and "prior" in doc["timings_ms"]
    prior = TokenPrior.load(prior_file)
    assert prior.meta["history_sha256"] == sha256(EXAMPLE_HISTORY) and prior.meta["population"] == "toy"
    from p2p_edge.lexical import history_text

    items = [json.loads(line) for line in EXAMPLE_HISTORY.read_text().splitlines() if line.strip()]
    assert {t for it in items for t in shared_llm.tokenize(history_text(it))} == set(prior.ids.tolist())
    assert personal_prior(out / "adapter.gguf") is not None   # it rides with this adapter
    prof = json.loads((out / "profile.json").read_text())
    assert prof["token_prior"]["distinct_tokens"] == len(prior) and prof["token_prior"]["default_on"] is True
    # a warm run (same history, same table) keeps the prior as it is; another history makes a new one
    before = prior_file.stat()
    assert invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--out", out).exit_code == 0
    assert (prior_file.stat().st_ino, prior_file.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "Completely different words here."}) + "\n")
    assert invoke("personalize", other, "--hypernet", hyp, "--summary", SUMMARY, "--out", out).exit_code == 0
    again = TokenPrior.load(prior_file)
    assert again.meta["history_sha256"] == sha256(other) and len(again) < len(prior)


def test_personalize_without_a_population_leaves_no_stale_prior(shared_llm, hyp, tmp_path, toy_population,
                                                                monkeypatch):
    import p2p_edge.token_prior as tp

    toy_population(True)
    out = tmp_path / "out"
    assert invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--out", out).exit_code == 0
    assert (out / "token_prior.npz").is_file()
    monkeypatch.setattr(tp, "DEFAULT_POPULATION", tmp_path / "none.npz")   # not installed
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--json", "--out", out)
    assert r.exit_code == 0 and json.loads(r.stdout)["token_prior"] is None
    assert not (out / "token_prior.npz").exists()


def test_a_population_for_another_base_is_one_line(shared_llm, hyp, tmp_path, monkeypatch):
    import numpy as np

    import p2p_edge.token_prior as tp

    bad = tp.Population.from_counts(np.zeros(49152), beta=0.5, mu=100.0, meta={"base_sha256": "0" * 64})
    monkeypatch.setattr(tp, "DEFAULT_POPULATION", bad.save(tmp_path / "bad.npz"))
    r = invoke("personalize", EXAMPLE_HISTORY, "--hypernet", hyp, "--summary", SUMMARY, "--out", tmp_path / "o")
    assert r.exit_code != 0
    assert_one_line_error(r.stderr, "bad.npz", "another base model")
    assert not (tmp_path / "o" / "adapter.gguf").exists()


@pytest.mark.slow
def test_chat_prior_on_off_and_compare(shared_llm, tmp_path, adapter_file, base_spec):
    """A prior stored beside an adapter of the same history is used by default when its table says so; /prior off
    takes it away, /compare's personal reply shows it; at LoRA scale 0 only the prior differs from the base."""
    import numpy as np

    from p2p_edge.gguf import read_adapter, write_adapter
    from p2p_edge.token_prior import TokenPrior

    lora, _ = read_adapter(adapter_file)
    adapter = write_adapter(tmp_path / "u" / "adapter.gguf", lora, base_spec, metadata={"history_sha256": "h1"})
    banana = shared_llm.tokenize(" banana")[0]
    TokenPrior(np.array([banana], np.int32), np.array([40.0], np.float32), 49152,
               {"history_sha256": "h1", "default_on": True}).save(adapter.parent / "token_prior.npz")
    stdin = "/compare Name a colour.\n/prior maybe\n/prior off\n/compare Name a colour.\n"
    r = CliRunner().invoke(app, ["chat", "--adapter", str(adapter), "--max-tokens", "6", "--scale", "0"], input=stdin)
    assert r.exit_code == 0, r.output
    assert "token prior on (1 of your words' tokens)" in r.stdout.splitlines()[0]
    blocks = compare_blocks(r.stdout)
    assert [b[0] for b in blocks] == ["base", "personal (scale 0, token prior)", "base", "personal (scale 0)"]
    assert "banana" in blocks[1][1].lower() and "banana" not in blocks[0][1].lower()
    assert blocks[2][1] == blocks[3][1] == blocks[0][1]
    assert "usage: /prior on|off" in r.stdout and "(token prior off" in r.stdout
    # --no-prior starts without it; a prior of another history never rides along
    r = CliRunner().invoke(app, ["chat", "--adapter", str(adapter), "--no-prior", "--max-tokens", "2"], input="")
    assert "token prior off" in r.stdout.splitlines()[0]
    other = write_adapter(tmp_path / "u" / "adapter.gguf", lora, base_spec, metadata={"history_sha256": "h2"})
    r = CliRunner().invoke(app, ["chat", "--adapter", str(other), "--max-tokens", "2"], input="/prior on\n")
    assert "no token prior" in r.stdout.splitlines()[0] and "(no token prior beside this adapter" in r.stdout
