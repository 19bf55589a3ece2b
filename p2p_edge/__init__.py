"""p2p-edge: on-device LLM personalization with a Profile-to-PEFT hypernetwork.

    from p2p_edge import Client, adapter_scale, personal_prior
    client = Client()                                   # loads the encoder, hypernet and base model once
    result = client.personalize("history.jsonl")        # -> Result: adapter, profile, token_prior, timings_ms
    client.llm.use(client.llm.load_adapter(result.adapter), scale=adapter_scale(result.adapter))
    client.llm.set_prior(personal_prior(result.adapter))   # the user's token prior (None: none stored)
    print(client.llm.chat([{"role": "user", "content": "Recommend me something to buy."}]))

Importing this package (and running the client commands) never imports torch; the names below load on first use.
"""

__version__ = "0.1.0"
__all__ = ["Client", "Result", "LocalLLM", "adapter_scale", "personal_prior", "__version__"]

_LAZY = {"Client": "p2p_edge.personalize", "Result": "p2p_edge.personalize", "LocalLLM": "p2p_edge.runtime",
         "adapter_scale": "p2p_edge.chat", "personal_prior": "p2p_edge.chat"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'p2p_edge' has no attribute {name!r}")
