"""bench.adapter_spread: the user-specific share of profile vectors and of the weight updates they generate."""

import numpy as np

from bench.adapter_spread import adapter_spread, profile_spread
from p2p_edge.gguf import LoraWeights


def lora(rng, scale=1.0, base=None):
    a = {m: rng.normal(size=(2, 4, 6)).astype(np.float32) * scale for m in ("q_proj", "v_proj")}
    b = {m: rng.normal(size=(2, 6, 4)).astype(np.float32) for m in ("q_proj", "v_proj")}
    if base is not None:
        a = {m: base.a[m] + a[m] for m in a}
        b = {m: base.b[m].copy() for m in b}
    return LoraWeights(rank=4, alpha=8.0, a=a, b=b)


def test_identical_adapters_have_no_user_share():
    rng = np.random.default_rng(0)
    one = lora(rng)
    r = adapter_spread([one, one, one], null=one)
    assert abs(r["user_specific_share"]) < 1e-6 and r["distance_to_null"] == 0


def test_user_share_matches_the_direct_computation():
    rng = np.random.default_rng(1)
    base = lora(rng)
    users = [lora(rng, 0.3, base) for _ in range(5)]
    d = np.stack([np.concatenate([u.delta(m, l).ravel() for m in ("q_proj", "v_proj") for l in range(2)]) for u in users])
    want = ((d - d.mean(0)) ** 2).sum() / (d ** 2).sum()
    r = adapter_spread(users, null=base)
    assert abs(r["user_specific_share"] - want) < 1e-5
    assert 0 < r["user_specific_share"] < 1 and r["distance_to_null"] > 0
    # a larger per-user part -> a larger share
    assert adapter_spread([lora(rng, 3.0, base) for _ in range(5)], null=base)["user_specific_share"] > want


def test_profile_spread():
    v = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert profile_spread(v) == {"mean_pairwise_cosine": 1.0, "user_specific_share": 0.0}
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    r = profile_spread(w)
    assert r["mean_pairwise_cosine"] == 0.0 and abs(r["user_specific_share"] - 0.5) < 1e-9
