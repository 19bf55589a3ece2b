"""Counters for GET /metrics, rendered in Prometheus' text format (no client library needed).

Labels carry route templates (`/v1/adapters/{user}`) and status codes only: never a user id, a model id or
anything a request contained.
"""

from __future__ import annotations

import threading
from collections import Counter

PREFIX = "p2p_edge"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status)
        self.counters: Counter[str] = Counter()
        self.sums: dict[str, list[float]] = {}  # name -> [sum, count]
        self.gauges: dict[str, callable] = {}

    def request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            s = self.sums.setdefault(name, [0.0, 0])
            s[0] += value
            s[1] += 1

    def gauge(self, name: str, fn) -> None:
        self.gauges[name] = fn

    HELP = {
        "requests_total": "HTTP requests answered, by method, route and status.",
        "adapter_cache_hits_total": "Requests whose adapter was already loaded.",
        "adapter_cache_misses_total": "Requests that loaded their adapter from disk.",
        "adapter_cache_evictions_total": "Adapters freed to stay within --max-loaded-adapters.",
        "generated_tokens_total": "Completion tokens generated.",
        "prompt_tokens_total": "Prompt tokens evaluated.",
        "adapters_created_total": "Adapters created by POST /v1/adapters.",
        "adapter_swap_ms": "Time to make a request's adapter active (load on a miss, activate, reset the KV cache).",
        "personalize_ms": "Time of POST /v1/adapters' personalization (history read to adapter written and checked).",
        "adapters_loaded": "Adapters loaded into llama.cpp now.",
        "queue_depth": "Model jobs waiting or running.",
    }

    def render(self) -> str:
        out: list[str] = []

        def head(name: str, kind: str):
            out.append(f"# HELP {PREFIX}_{name} {self.HELP.get(name, name)}")
            out.append(f"# TYPE {PREFIX}_{name} {kind}")

        with self._lock:
            requests = sorted(self.requests.items())
            counters = dict(self.counters)
            sums = {k: tuple(v) for k, v in self.sums.items()}
        head("requests_total", "counter")
        for (method, route, status), n in requests:
            out.append(f'{PREFIX}_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
        for name in ("adapter_cache_hits_total", "adapter_cache_misses_total", "adapter_cache_evictions_total",
                     "adapters_created_total", "generated_tokens_total", "prompt_tokens_total"):
            head(name, "counter")
            out.append(f"{PREFIX}_{name} {counters.get(name, 0)}")
        for name in ("adapter_swap_ms", "personalize_ms"):
            total, count = sums.get(name, (0.0, 0))
            head(name, "summary")
            out.append(f"{PREFIX}_{name}_sum {total:.3f}")
            out.append(f"{PREFIX}_{name}_count {count}")
        for name, fn in sorted(self.gauges.items()):
            head(name, "gauge")
            out.append(f"{PREFIX}_{name} {fn()}")
        return "\n".join(out) + "\n"
