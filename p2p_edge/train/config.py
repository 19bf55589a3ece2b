"""Training configuration: one TOML file holds every knob (see configs/train_default.toml)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InputError
from ..lexical import KINDS as LEXICAL_KINDS


@dataclass
class BaseCfg:
    path: str = ""            # "" = the bundled SmolLM2 GGUF; else a .gguf file or an HF model directory


@dataclass
class ProfilesCfg:
    top_k: int = 2
    query_items: dict = field(default_factory=dict)  # dataset name -> last items per user reserved as queries
    default_query_items: int = 2
    max_users: dict = field(default_factory=dict)     # dataset name -> deterministic subsample size (0/absent = all)
    # dataset name -> N: N more users of that dataset, next in max_users' subsample order, join the TRAIN part of
    # both splits and never val or test. The splits, validation and test users stay those of max_users alone, so a
    # recipe with more training users is read on exactly the users of the recipe without them. Needs max_users there.
    train_only_users: dict = field(default_factory=dict)
    summaries_dir: str = "../runs/profiles"
    # dataset name -> N: each TRAIN user also gives up to N earlier (profile, queries) cuts as extra training users
    # (more distinct profiles and examples from long histories; their summaries: `profiles summaries --extra-cuts N`)
    extra_cuts: dict = field(default_factory=dict)
    variant: str = "full"     # full | summary_only | retrieval_only (ablations)
    # > 0: the profile vector adds this x the habits line's own embedding (label / rating habits), re-normalised;
    # written to the card, and the client builds the same vector. 0 = the text embedding alone (v1).
    habits_weight: float = 0.0
    # "token_centroid": the profile vector also carries the base model's input-embedding centroid of the profile
    # items' tokens (p2p_edge/lexical.py), read by the profile branch only (needs hypernet.profile_branch); "" = off
    lexical: str = ""


@dataclass
class HypernetSettings:
    hidden: int = 256
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    a_init_scale: float = 0.1
    type_emb_dim: int = 32
    depth_emb_dim: int = 32
    # true: A = A_shared[l, m] + A_hyper(e, l, m) (same for B), with free per-(layer, module) shared matrices that
    # learn the common adaptation as fast as MT-LoRA does, so the MLP only has to model how users differ
    shared_lora: bool = False
    # true: the profile also reaches the heads through its own path, standardised per dimension over the training
    # users (mean and std fixed when training starts, stored in the model and the export). In the trunk the unit-norm
    # profile is ~1/70 of the LayerNorm's input energy beside the module-type and depth embeddings, and what differs
    # from user to user is a fraction of that. The path is an MLP whose last layer starts at zero, so a model
    # continued from one without it starts from that model's exact outputs.
    profile_branch: bool = False


@dataclass
class TrainCfg:
    method: str = "p2p"       # p2p (hypernet) | mt_lora (one shared LoRA, the control)
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 30
    max_len: int = 192
    eval_every: int = 100
    save_every: int = 100
    val_examples: int = 64
    seed: int = 0
    threads: int = 0          # 0 = torch default
    mixed_precision: str = "bf16"   # no | bf16 | fp16 (fp16 on GPU only)
    max_examples_per_user: int = 0  # 0 = all of a train user's reserved queries
    # Regularisers on the profile vector, training only (the hypernet memorises train users' exact vectors):
    profile_noise: float = 0.0      # std of Gaussian noise added to the unit-norm profile embedding
    profile_dropout: float = 0.0    # probability of replacing a profile by the zero vector (learns a shared LoRA)
    # Profile contrast: + contrastive * mean(relu(margin - (loss with another train user's profile - loss with
    # the own profile))), per example, the other user drawn from the same dataset. The SFT loss alone lets the
    # hypernet emit nearly one LoRA for everyone; this term rewards adapters that fit their own user better than
    # someone else's. One extra forward/backward per step (~2x step time); 0 = off. Constant for mt_lora.
    contrastive: float = 0.0
    contrastive_margin: float = 0.1
    # Start from this checkpoint's weights (fresh optimizer and schedule) when out_dir has no last.pt yet;
    # relative to the config file. Same hypernet shape and method required.
    init_from: str = ""
    # Parameter-name prefixes of the generator to train (e.g. ["profile_in."], the profile branch); every other
    # weight stays as initialised (init_from). Empty = train everything.
    train_only: list = field(default_factory=list)
    # Stop with an error when the validation loss exceeds this multiple of its value before training (the
    # generator starts at delta W = 0, i.e. the base model): a peak-lr blow-up otherwise trains on for hours and
    # yields a hypernet worse than none. 0 = off. Needs validation rows.
    diverge_ratio: float = 1.5
    # On a blow-up (the check above, or a nan/inf loss): go back to the state at the last evaluation that passed
    # (saved as good.pt), halve the learning rate for the rest of the run and draw the same batches again; at most
    # this many times, then stop with the error (0 = stop at once), last.pt put back to that state.
    rewinds: int = 2
    # Long-form targets: cut at this many tokens (0 = max_len // 3, the short-answer recipes); the end of the turn is
    # then trained only when the whole target fit, so a cut text does not teach stopping mid-text.
    max_target_tokens: int = 0
    # Assistant preservation: the base model's own greedy replies to open prompts (a JSONL written by
    # `python -m p2p_edge.train.preserve`; relative to the config file). preserve_fraction of each batch's rows are
    # such replies, each under a random training user's profile, and their token-mean loss is added times
    # preserve_weight: self-distillation that keeps every adapter close to the base model outside the tasks.
    preserve_replies: str = ""
    preserve_fraction: float = 0.0
    preserve_weight: float = 1.0
    # "sft": the loss of the base model's reply tokens; "kl": KL(base || adapted) next-token distributions on those
    # replies (nothing to gain by memorising the replies; one extra no-grad forward of the preservation rows)
    preserve_loss: str = "sft"


@dataclass
class Config:
    tasks_config: str = "tasks.toml"
    tasks: list = field(default_factory=list)
    split: str = "both"       # train on users that are TRAIN in both the random and the OOD split, so one
                              # model is evaluated honestly on either split's test users; or "random" | "ood"
    splits_file: str = ""     # "" = compute the splits (seeded); else reuse this splits.json (same users)
    out_dir: str = "../runs/default"
    base: BaseCfg = field(default_factory=BaseCfg)
    profiles: ProfilesCfg = field(default_factory=ProfilesCfg)
    hypernet: HypernetSettings = field(default_factory=HypernetSettings)
    train: TrainCfg = field(default_factory=TrainCfg)
    source: str = ""

    def resolve(self, p: str) -> Path:
        """Relative paths in the config are relative to the config file's directory."""
        path = Path(p).expanduser()
        return path if path.is_absolute() or not self.source else (Path(self.source).parent / path).resolve()

    def query_items_for(self, dataset: Path) -> int:
        return int(self.profiles.query_items.get(dataset_name(dataset), self.profiles.default_query_items))

    def to_dict(self) -> dict:
        return asdict(self)


def check_card_profile(card, cfg: Config, what: str) -> None:
    """An evaluation builds its users' profile vectors from `cfg`: they must be the kind of vector the hypernet
    `what` was trained on (its card, a HypernetCard), or every score is of the wrong input."""
    for key in ("habits_weight", "top_k", "lexical"):
        want, have = getattr(card, key), getattr(cfg.profiles, key)
        if want != have:
            raise InputError(cfg.source, f"is {have}, but {what} was trained with {want}: use its training config",
                             field=f"profiles.{key}")


def dataset_name(path: Path) -> str:
    return Path(path).name.split(".")[0]


def _fill(cls, data: dict, path: Path, prefix: str):
    known = {f.name: f for f in fields(cls)}
    kw = {}
    for k, v in data.items():
        if k not in known:
            raise InputError(path, f"unknown key '{prefix}{k}'", field=prefix + k)
        sub = {"base": BaseCfg, "profiles": ProfilesCfg, "hypernet": HypernetSettings, "train": TrainCfg}.get(k)
        if sub is not None and cls is Config:
            if not isinstance(v, dict):
                raise InputError(path, f"[{k}] must be a table", field=k)
            v = _fill(sub, v, path, f"{k}.")
        else:
            default = known[k].default if known[k].default is not field else None
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise InputError(path, f"must be true or false, got {type(v).__name__}", field=prefix + k)
            elif isinstance(default, (int, float)):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise InputError(path, f"must be a number, got {type(v).__name__}", field=prefix + k)
                v = type(default)(v)
            elif isinstance(default, str) and not isinstance(v, str):
                raise InputError(path, f"must be a string, got {type(v).__name__}", field=prefix + k)
        kw[k] = v
    return cls(**kw)


# keys whose values are paths relative to the file that sets them
PATH_KEYS = ("tasks_config", "out_dir", "splits_file", "base.path", "profiles.summaries_dir", "train.init_from",
             "train.preserve_replies")


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read config ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(path, f"invalid TOML: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, tables merged key by key (so an overlay holds only what it changes)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _rebase_paths(data: dict, src: Path, dst: Path) -> dict:
    """Path values of a file in `src`'s directory, rewritten relative to `dst`'s directory."""
    if src.parent.resolve() == dst.parent.resolve():
        return data
    data = _merge(data, {})
    for key in PATH_KEYS:
        *table, name = key.split(".")
        holder = data.get(table[0], {}) if table else data
        v = holder.get(name) if isinstance(holder, dict) else None
        if isinstance(v, str) and v and not Path(v).expanduser().is_absolute():
            holder[name] = os.path.relpath((src.parent / v).resolve(), dst.parent.resolve())
    return data


def _load_data(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The TOML data of `path` with its `extends = "BASE.toml"` chain merged in (relative to this file)."""
    if path.resolve() in seen:
        raise InputError(path, "extends itself (a cycle)", field="extends")
    data = _read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise InputError(path, "must be a path to another training config", field="extends")
    base_path = (path.parent / parent).expanduser()
    if not base_path.is_file():
        raise InputError(path, f"{base_path}: no such config", field="extends")
    base = _rebase_paths(_load_data(base_path, (*seen, path.resolve())), base_path, path)
    return _merge(base, data)


def load_config(path: Path) -> Config:
    path = Path(path)
    data = _load_data(path)
    cfg = _fill(Config, data, path, "")
    cfg.source = str(path.resolve())
    if cfg.train.method not in ("p2p", "mt_lora"):
        raise InputError(path, f"must be 'p2p' or 'mt_lora', got {cfg.train.method!r}", field="train.method")
    if cfg.split not in ("both", "random", "ood"):
        raise InputError(path, f"must be 'both', 'random' or 'ood', got {cfg.split!r}", field="split")
    if cfg.profiles.variant not in ("full", "summary_only", "retrieval_only"):
        raise InputError(path, f"unknown profile variant {cfg.profiles.variant!r}", field="profiles.variant")
    if cfg.profiles.lexical not in ("", *LEXICAL_KINDS):
        raise InputError(path, f"must be \"\" or one of {', '.join(LEXICAL_KINDS)}", field="profiles.lexical")
    if cfg.profiles.lexical and not cfg.hypernet.profile_branch:
        raise InputError(path, "a lexical input is read by the profile branch: set hypernet.profile_branch = true",
                         field="profiles.lexical")
    if cfg.train.contrastive < 0 or cfg.train.contrastive_margin < 0:
        raise InputError(path, "must be >= 0", field="train.contrastive" if cfg.train.contrastive < 0
                         else "train.contrastive_margin")
    if cfg.train.diverge_ratio != 0 and not cfg.train.diverge_ratio > 1:
        raise InputError(path, "must be 0 (off) or > 1", field="train.diverge_ratio")
    if cfg.train.preserve_loss not in ("sft", "kl"):
        raise InputError(path, "must be 'sft' or 'kl'", field="train.preserve_loss")
    if not 0 <= cfg.train.preserve_fraction < 1:
        raise InputError(path, "must be in [0, 1)", field="train.preserve_fraction")
    if cfg.train.preserve_fraction > 0 and not cfg.train.preserve_replies:
        raise InputError(path, "preserve_fraction > 0 needs train.preserve_replies", field="train.preserve_replies")
    if cfg.train.preserve_weight < 0 or cfg.train.max_target_tokens < 0:
        raise InputError(path, "must be >= 0", field="train.preserve_weight" if cfg.train.preserve_weight < 0
                         else "train.max_target_tokens")
    if not all(isinstance(x, str) and x for x in cfg.train.train_only):
        raise InputError(path, "must be a list of parameter-name prefixes", field="train.train_only")
    if cfg.train.rewinds < 0:
        raise InputError(path, "must be >= 0", field="train.rewinds")
    if cfg.train.mixed_precision not in ("no", "bf16", "fp16"):
        raise InputError(path, "must be no, bf16 or fp16", field="train.mixed_precision")
    return cfg
