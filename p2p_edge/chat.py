"""The local chat REPL: one base model in llama.cpp, the personal adapter switchable on and off."""

from __future__ import annotations

import sys
from pathlib import Path


HELP = ("commands: /adapter on|off  /prior on|off  /scale X  /compare PROMPT  /reset  /help  /quit   "
        "(Ctrl-C stops a reply, Ctrl-D quits)")
MAX_SCALE = 4.0
CONTEXT_CHARS = 5000  # keep the conversation inside the model's context (2048 tokens)


def _trim(messages: list[dict]) -> list[dict]:
    """Drop the oldest turns (never the system prompt) until the conversation fits."""
    system, turns = messages[:1], messages[1:]
    while len(turns) > 1 and sum(len(m["content"]) for m in turns) > CONTEXT_CHARS:
        turns = turns[2:] if len(turns) > 2 else turns[1:]
    return system + turns


def adapter_meta(adapter: Path) -> dict[str, str]:
    """The `p2p.meta.*` strings written into an adapter (the whole file is read and validated: read it once)."""
    from p2p_edge.gguf import read_adapter

    return read_adapter(adapter)[1]


def adapter_scale(adapter: Path, meta: dict[str, str] | None = None) -> float:
    """The LoRA strength an adapter's hypernet card recommends for chat (written into the adapter; 1.0 if none)."""
    meta = adapter_meta(adapter) if meta is None else meta
    try:
        return float(meta.get("chat_scale", 1.0))
    except ValueError:
        return 1.0


def personal_prior(adapter: Path, meta: dict[str, str] | None = None):
    """The token prior stored beside an adapter by personalize, if it was built from the adapter's own history."""
    from p2p_edge.token_prior import prior_for_adapter

    meta = adapter_meta(adapter) if meta is None else meta
    return prior_for_adapter(adapter, meta.get("history_sha256"))


def prior_state(prior, on: bool) -> str:
    if prior is None:
        return "no token prior"
    return f"token prior {'on' if on else 'off'} ({len(prior):,} of your words' tokens)"


def parse_scale(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if 0.0 <= x <= MAX_SCALE else None


def run_repl(*, adapter: Path | None, history: Path | None, base_model: Path | None, hypernet: Path | None,
             max_tokens: int, temperature: float, system: str | None, threads: int | None,
             summary: str | None = None, no_summary: bool = False, scale: float | None = None,
             prior: bool | None = None, stdin=None, stdout=None) -> None:
    """prior: use the token prior stored beside the adapter (None: as the population table says, default_on)."""
    from .paths import PROMPTS_DIR
    from .runtime import LocalLLM
    from .token_prior import active_prior

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def say(s: str = "", end: str = "\n"):
        stdout.write(s + end)
        stdout.flush()

    llm = LocalLLM(base_model, n_threads=threads)
    if history is not None:
        from .personalize import Client, check_hypernet_exists, user_dir, user_id_for

        check_hypernet_exists(hypernet)
        client = Client(hypernet_path=hypernet, llm=llm, threads=threads)
        res = client.personalize(history, user_dir(user_id_for(history)), summary=summary, no_summary=no_summary)
        adapter = res.adapter
        say(f"personalized from {res.history.n_items} items -> {adapter}")
    loaded = llm.load_adapter(adapter) if adapter is not None else None
    meta = adapter_meta(adapter) if adapter is not None else None
    if scale is None:
        scale = adapter_scale(adapter, meta) if adapter is not None else 1.0
    llm.use(loaded, scale)
    token_prior = personal_prior(adapter, meta) if adapter is not None else None
    llm.set_prior(active_prior(token_prior, prior))
    prior_on = llm.prior is not None
    state = f"on (scale {scale:g}) · {prior_state(token_prior, prior_on)}" if loaded else "off (base model)"
    say(f"p2p-edge chat · {llm.spec.name} · adapter {state}\n{HELP}")

    system_prompt = system or (PROMPTS_DIR / "system.txt").read_text(encoding="utf-8").strip()
    messages = [{"role": "system", "content": system_prompt}]
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    while True:
        try:
            if interactive:
                line = input("you> ")
            else:
                say("you> ", end="")
                line = stdin.readline()
                if not line:
                    raise EOFError
        except EOFError:
            say()
            return
        except KeyboardInterrupt:
            say("\n(Ctrl-D or /quit to leave)")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                return
            if cmd == "/help":
                say(HELP)
            elif cmd == "/reset":
                messages = messages[:1]
                llm.llm.reset()
                say("(conversation cleared)")
            elif cmd == "/adapter":
                if arg not in ("on", "off"):
                    say("usage: /adapter on|off")
                elif arg == "on" and loaded is None:
                    say("(no adapter loaded: start with --adapter or --history)")
                else:
                    llm.use(loaded if arg == "on" else None, scale)
                    say(f"(adapter {arg})")
            elif cmd == "/prior":
                if arg not in ("on", "off"):
                    say("usage: /prior on|off   (your token prior: a bias toward the words of your history)")
                elif token_prior is None:
                    say("(no token prior beside this adapter: personalize again to make one)")
                else:
                    prior_on = arg == "on"
                    llm.set_prior(token_prior if prior_on else None)
                    say(f"({prior_state(token_prior, prior_on)})")
            elif cmd == "/scale":
                x = parse_scale(arg.strip())
                if x is None:
                    say(f"usage: /scale X   (LoRA strength, 0 to {MAX_SCALE:g}; now {scale:g})")
                elif loaded is None:
                    say("(no adapter loaded: start with --adapter or --history)")
                else:
                    scale = x
                    if llm.active is not None:
                        llm.use(loaded, scale)
                    say(f"(adapter scale {scale:g})")
            elif cmd == "/compare":
                if not arg.strip():
                    say("usage: /compare PROMPT   (the base model's and your adapter's greedy replies, one after the "
                        "other; the conversation is not changed)")
                elif loaded is None:
                    say("(no adapter loaded: start with --adapter or --history)")
                else:
                    compare(llm, loaded, scale, _trim(messages + [{"role": "user", "content": arg.strip()}]),
                            max_tokens, say, token_prior if prior_on else None)
            else:
                say(f"unknown command {cmd}; {HELP}")
            continue
        messages.append({"role": "user", "content": line})
        messages = _trim(messages)
        reply = []
        say("bot> ", end="")
        try:
            for piece in llm.chat_stream(messages, max_tokens=max_tokens, temperature=temperature):
                reply.append(piece)
                say(piece, end="")
        except KeyboardInterrupt:
            say(" [stopped]", end="")
        say()
        messages.append({"role": "assistant", "content": "".join(reply)})




def compare(llm, loaded, scale: float, messages: list[dict], max_tokens: int, say, prior=None) -> None:
    """The same prompt, greedy, with the base model alone and with the personal adapter (and token prior, if on);
    the active adapter and prior are kept."""
    active, active_prior = llm.active, llm.prior
    personal = f"personal (scale {scale:g}{', token prior' if prior is not None else ''})"
    try:
        for label, ad, pr in (("base", None, None), (personal, loaded, prior)):
            llm.use(ad, scale)
            llm.set_prior(pr)
            say(f"--- {label} ---")
            try:
                for piece in llm.chat_stream(messages, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0):
                    say(piece, end="")
            except KeyboardInterrupt:
                say(" [stopped]", end="")
            say()
    finally:
        llm.use(active, scale)
        llm.set_prior(active_prior)
