"""The one decoder of training checkpoints (last.pt, good.pt): what training writes and everything else reads.

A checkpoint is a dict: `method` ("p2p" or "mt_lora"), `config` (the generator's HypernetModuleConfig as a dict),
`state_dict`, `step`, `meta` (base model, encoder, profile settings, training tasks: what the exported card states)
and, for resuming, `optimizer`, `rng`, `val_loss_start`, `lr_scale`, `rewinds_used`.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from p2p_edge.errors import InputError
from p2p_edge.gguf import LoraWeights
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig, SharedLora


def read_checkpoint(path: Path, *, method: str | None = None) -> dict:
    """Load a checkpoint on the CPU; a missing, unreadable or foreign file (or, with `method`, one trained with
    another method) is one InputError naming it. An exported hypernet (`.onnx` with its card) reads as a p2p
    checkpoint of its weights (checkpoint_from_onnx), so a shipped hypernet can be trained on from where it is."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    if path.suffix == ".onnx":
        ck = checkpoint_from_onnx(path)
        if method is not None and method != "p2p":
            raise InputError(path, f"a {method} checkpoint is needed, an exported hypernet is a p2p one",
                             field="method")
        return ck
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise InputError(path, f"not a readable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(ck, dict) or not {"config", "state_dict"} <= set(ck):
        raise InputError(path, "not a p2p-edge training checkpoint (no config / state_dict)")
    if method is not None and ck.get("method", "p2p") != method:
        raise InputError(path, f"a {method} checkpoint is needed, this one was trained with {ck.get('method')!r}",
                         field="method")
    return ck


def hypernet_from(ck: dict) -> HypernetModule:
    """The hypernet of a p2p checkpoint, in eval mode."""
    model = HypernetModule(HypernetModuleConfig(**ck["config"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval()


def shared_lora_from(ck: dict) -> LoraWeights:
    """The one LoRA of an MT-LoRA checkpoint (SharedLora's a / b parameters), as float32 numpy."""
    cfg = HypernetModuleConfig(**ck["config"])
    lora = SharedLora(cfg)
    lora.load_state_dict(ck["state_dict"])
    return LoraWeights(rank=cfg.rank, alpha=cfg.alpha,
                       a={m: lora.a[m].detach().float().numpy() for m in cfg.modules},
                       b={m: lora.b[m].detach().float().numpy() for m in cfg.modules})


def checkpoint_from_onnx(path: Path, *, atol: float = 1e-5) -> dict:
    """The weights of an exported hypernet (hypernet.onnx + its card) as a p2p checkpoint: `config` from the card,
    `state_dict` from the ONNX initializers, `step` 0, no optimizer state. The exporter (export_onnx) keeps the
    names of LayerNorm weights and biases; a Linear's weight is stored transposed under a generated name, and is
    found as the MatMul that feeds the Add of that Linear's named bias; the embeddings are folded to constants:
    depth_emb(arange(L)) is its whole table, type_emb[m] one row per module, in module order. The recovered module
    is then run beside onnxruntime on random profiles: any difference over `atol` is an InputError, never a
    silently different hypernet."""
    import numpy as np

    from p2p_edge.hypernet.card import load_card

    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise InputError(path, "reading an exported hypernet's weights needs the onnx package "
                         "(pip install -e '.[export]')") from None
    card = load_card(path)
    cfg = HypernetModuleConfig(**card.hypernet_config)
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:   # onnx raises its own decode errors
        raise InputError(path, f"not a readable ONNX file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    prefix = "inner."   # export_onnx wraps the module as `inner`
    sd = {k[len(prefix):]: v for k, v in inits.items() if k.startswith(prefix)}
    for node in graph.node:   # the exporter keeps one copy of equal initializers (e.g. two zero biases)
        if node.op_type == "Identity" and node.output[0].startswith(prefix) and node.input[0] in inits:
            sd[node.output[0][len(prefix):]] = inits[node.input[0]]
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and not node.input[1].startswith(prefix):
            bias = [i for c in consumers.get(node.output[0], []) if c.op_type == "Add" for i in c.input
                    if i.startswith(prefix) and i.endswith(".bias")]
            if len(bias) != 1:
                raise InputError(path, f"cannot tell which Linear the weight {node.input[1]} belongs to")
            sd[bias[0][len(prefix):-len(".bias")] + ".weight"] = inits[node.input[1]].T
    L, dt, dd = cfg.n_layers, cfg.type_emb_dim, cfg.depth_emb_dim
    depth = [v for k, v in inits.items() if v.shape == (L, dd) and not k.startswith(prefix)]
    types = [inits[n.input[0]] for n in graph.node if n.op_type == "Expand" and n.input[0] in inits
             and inits[n.input[0]].shape == (dt,)]
    if len(depth) != 1 or len(types) != len(cfg.modules):
        raise InputError(path, "cannot find the folded depth / module-type embeddings in the ONNX graph")
    sd["depth_emb.weight"], sd["type_emb.weight"] = depth[0], np.stack(types)
    model = HypernetModule(cfg)
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()})
    except RuntimeError as e:
        raise InputError(path, f"its weights do not fit its card's hypernet_config ({str(e).splitlines()[0]})") from None
    model.eval()
    _check_against_onnx(path, model, atol)
    return {"method": "p2p", "config": cfg.to_dict(), "state_dict": model.state_dict(), "step": 0,
            "meta": {"recovered_from": str(path), "hypernet_id": card.id, "onnx_sha256": card.onnx_sha256}}


def _check_against_onnx(path: Path, model: HypernetModule, atol: float) -> None:
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    e = np.random.default_rng(0).standard_normal((3, model.cfg.emb_dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: e})))
    with torch.no_grad():
        want = model(torch.from_numpy(e))
    worst = max(float(np.abs(got[k] - want[k].numpy()).max()) for k in want)
    if worst > atol:
        raise InputError(path, f"the weights read from it do not reproduce it (max difference {worst:.2g})")
