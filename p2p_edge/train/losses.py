"""The training objective: the SFT loss of the adapted model on users' targets, the profile regularisers, the
assistant-preservation term (SFT or KL to the base model) and the profile contrast."""

from __future__ import annotations


import torch
from torch import nn

from p2p_edge.train.model import LoraInjector
from p2p_edge.train.lm import IGNORE, target_losses

def perturb_profiles(e: torch.Tensor, noise: float, dropout: float) -> torch.Tensor:
    """Training-time profile regularisers: Gaussian noise, and whole-profile dropout to the zero vector."""
    if noise > 0:
        e = e + noise * torch.randn_like(e)
    if dropout > 0:
        keep = (torch.rand(e.shape[0], 1, device=e.device) >= dropout).to(e.dtype)
        e = e * keep
    return e


def token_losses(model, injector: LoraInjector, gen: nn.Module, e: torch.Tensor, ids, mask, labels):
    """target_losses with the LoRAs the generator makes from profile vectors e."""
    with injector.use(gen(e)):
        return target_losses(model, ids, mask, labels)


def sft_loss(model, injector: LoraInjector, gen: nn.Module, emb: torch.Tensor, batch,
             noise: float = 0.0, dropout: float = 0.0, negatives: torch.Tensor | None = None,
             contrastive: float = 0.0, margin: float = 0.0, keep: torch.Tensor | None = None,
             keep_weight: float = 0.0, keep_kl: bool = False) -> torch.Tensor:
    """Mean target-token loss of the batch; with `negatives` (one other user per row) and contrastive > 0, plus
    the profile-contrast hinge (see TrainCfg.contrastive). `keep` (bool per row) marks assistant-preservation rows
    (the base model's own replies to open prompts): their token mean is a separate term, times keep_weight, so a
    batch's long replies do not drown its short task answers (see TrainCfg.preserve_weight). keep_kl: that term is
    the KL from the base model's next-token distribution to the adapted one on those rows (keep_kl_term) instead of
    the loss of the reply's tokens."""
    ids, mask, labels, users = batch
    e = perturb_profiles(emb[users], noise, dropout)
    has_keep = keep is not None and bool(keep.any())
    if has_keep and keep_kl:   # the preservation rows leave the batch: the KL term below reads them on their own
        kept = (e[keep], ids[keep], mask[keep], labels[keep])
        t = ~keep
        e, ids, mask, labels = e[t], ids[t], mask[t], labels[t]
        negatives = negatives[t] if negatives is not None else None
    tok, valid = token_losses(model, injector, gen, e, ids, mask, labels)
    keep_term = None
    if has_keep and keep_kl:
        keep_term = keep_kl_term(model, injector, gen, *kept)
    elif has_keep:
        keep_v = valid & keep[:, None]
        keep_term = (tok * keep_v).sum() / keep_v.sum().clamp(min=1)
        valid = valid & ~keep[:, None]   # the task mean and the contrast below are about the user's own task rows
    loss = (tok * valid).sum() / valid.sum().clamp(min=1)
    if keep_term is not None:
        loss = loss + keep_weight * keep_term
    if negatives is None or contrastive <= 0:
        return loss
    neg, _ = token_losses(model, injector, gen, emb[negatives], ids, mask, labels)
    n = valid.sum(1).clamp(min=1)
    gap = (neg * valid).sum(1) / n - (tok * valid).sum(1) / n   # > 0: own profile fits better
    return loss + contrastive * torch.relu(margin - gap).mean()


def keep_kl_term(model, injector: LoraInjector, gen: nn.Module, e: torch.Tensor, ids, mask, labels) -> torch.Tensor:
    """Mean over the target positions of KL(base || adapted) between next-token distributions. Fitting the base
    model's sampled reply token by token rewards making those exact tokens likelier than the base model itself does,
    and a hypernet can memorise a small prompt set that way (it did: bench/results/chat_candidate1_preserve_fit.md);
    the KL is 0 exactly at the base model's behaviour, so it has nothing to memorise beyond it."""
    valid = labels[:, 1:] != IGNORE
    if not bool(valid.any()):
        return torch.zeros((), device=ids.device)
    with torch.no_grad(), injector.use(None):
        hb = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logp_base = torch.log_softmax(model.lm_head(hb[:, :-1][valid]).float(), -1)
    with injector.use(gen(e)):
        ha = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logp = torch.log_softmax(model.lm_head(ha[:, :-1][valid]).float(), -1)
    return (logp_base.exp() * (logp_base - logp)).sum(-1).mean()


def negative_pool(train_uids: list[str], index: dict[str, int]) -> dict[int, list[int]]:
    """Row index of each train user -> row indices of the OTHER train users of its dataset (contrast negatives;
    an earlier cut "<dataset>/<user>@<n>" of the same user is not another user)."""
    def person(u):
        return u.split("@", 1)[0]

    by_ds: dict[str, list[str]] = {}
    for u in train_uids:
        by_ds.setdefault(u.split("/", 1)[0], []).append(u)
    return {index[u]: [index[v] for v in by_ds[u.split("/", 1)[0]] if person(v) != person(u)] for u in train_uids}
