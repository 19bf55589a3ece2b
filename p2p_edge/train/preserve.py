"""Assistant preservation data: the base model's own greedy replies to open prompts.

An adapter trained only on short-answer tasks learns "answer in a few words" for every prompt. Training therefore
mixes in self-distillation rows: open instructions (a committed text file, one per line, no external data) and the
reply the base model itself gives them through llama.cpp, under the chat's system prompt. Fitting those replies
with any user's profile keeps each adapter close to the base model outside the tasks.

    python -m p2p_edge.train.preserve --prompts configs/prompts/open_train.txt --out data/preserve/open_train.jsonl

Resumable: prompts already in --out (same base model and decoding) are skipped. Several --prompts files make one
set, e.g. `--prompts configs/prompts/open_train.txt configs/prompts/open_train_large.txt --out
data/preserve/open_train_all.jsonl` (what configs/train_chat_kl.toml trains on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import InputError, P2PError

MAX_TOKENS = 128
REPEAT_PENALTY = 1.1   # the chat's default: greedy decoding without it loops on a 135M model


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines that are not '#' comments; duplicates are an error naming the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(path, "prompts file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read prompts ({e})") from None
    out, seen = [], {}
    for n, line in enumerate(lines, 1):
        p = line.strip()
        if not p or p.startswith("#"):
            continue
        if p in seen:
            raise InputError(path, f"duplicate prompt (first on line {seen[p]})", line=n)
        seen[p] = n
        out.append(p)
    if not out:
        raise InputError(path, "no prompts")
    return out


def system_prompt() -> str:
    from ..paths import PROMPTS_DIR

    return (PROMPTS_DIR / "system.txt").read_text(encoding="utf-8").strip()


def messages_for(prompt: str, system: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def base_reply(llm, prompt: str, system: str, max_tokens: int = MAX_TOKENS) -> tuple[str, bool]:
    """(greedy reply, whether the model ended it itself) under the llm's active adapter (and token prior, if set)."""
    res = llm.llm.create_chat_completion(messages=messages_for(prompt, system), max_tokens=max_tokens,
                                         temperature=0.0, top_p=1.0, seed=0, repeat_penalty=REPEAT_PENALTY,
                                         logits_processor=llm.logits_processors() or None)
    choice = res["choices"][0]
    return (choice["message"]["content"] or "").strip(), choice.get("finish_reason") == "stop"


def load_replies(path: Path) -> list[dict]:
    """The rows of a replies file: prompt, system, reply, finished (each checked; errors name the line)."""
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "preservation replies not found; make them with python -m p2p_edge.train.preserve") \
            from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError as e:
                raise InputError(path, f"invalid JSON: {e}", line=n) from None
            for key, typ in (("prompt", str), ("system", str), ("reply", str), ("finished", bool)):
                if not isinstance(d.get(key), typ):
                    raise InputError(path, f"must be a {typ.__name__}", line=n, field=key)
            rows.append(d)
    if not rows:
        raise InputError(path, "no replies")
    return rows


def build(prompts_paths: list[Path], out: Path, *, threads: int | None = None, max_tokens: int = MAX_TOKENS,
          log=print) -> int:
    """Append the base model's reply for each prompt (of all the files, in order) not yet in `out`; returns how
    many were generated."""
    from ..runtime import LocalLLM

    prompts = list(dict.fromkeys(p for path in prompts_paths for p in read_prompts(path)))
    system = system_prompt()
    llm = LocalLLM(n_threads=threads)
    done = set()
    if out.is_file():
        for d in load_replies(out):
            if d.get("base_sha256") != llm.spec.sha256 or d.get("max_tokens") != max_tokens:
                raise P2PError(f"{out}: made with another base model or max_tokens; write to a new file")
            done.add((d["prompt"], d["system"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    n, t0 = 0, time.time()
    with open(out, "a", encoding="utf-8") as f:
        for p in prompts:
            if (p, system) in done:
                continue
            reply, finished = base_reply(llm, p, system, max_tokens)
            f.write(json.dumps({"prompt": p, "system": system, "reply": reply, "finished": finished,
                                "max_tokens": max_tokens, "repeat_penalty": REPEAT_PENALTY,
                                "base_sha256": llm.spec.sha256}, ensure_ascii=False) + "\n")
            f.flush()
            n += 1
    log(f"{n} replies in {time.time() - t0:.0f} s -> {out}")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=Path, nargs="+", required=True,
                    help="files of open prompts, one per line ('#' = comment)")
    ap.add_argument("--out", type=Path, required=True, help="JSONL of replies (appended; resumable)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    args = ap.parse_args(argv)
    try:
        build(args.prompts, args.out, threads=args.threads, max_tokens=args.max_tokens)
    except P2PError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
