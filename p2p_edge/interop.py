"""Export a personal adapter for other runtimes: PEFT (transformers, vLLM multi-LoRA) and Ollama.

    p2p-edge export ADAPTER.gguf --format peft|ollama --out DIR

The adapter is read and validated against the base model first (the bounded GGUF reader). The export is built in a
temporary folder beside DIR and renamed into place, so DIR is either complete or absent; an existing non-empty DIR
is never touched. Files are private (0600, folder 0700): the adapter is derived from the user's history.

- peft: `adapter_config.json` + `adapter_model.safetensors` in PEFT's layout, q rows in HF order (the GGUF stores them
  in llama.cpp's rope layout), weights at the strength they were trained at; `p2p-edge.json` beside them records the
  LoRA scale chat uses. `PeftModel.from_pretrained(<HF SmolLM2-135M-Instruct>, DIR)` loads it, and so do vLLM's
  `--enable-lora --lora-modules NAME=DIR` and `load_lora_adapter`.
- ollama: `Modelfile` (`FROM` the base GGUF, `ADAPTER ./adapter.gguf`, the chat template, system prompt and stop
  token) + `adapter.gguf` with the chat scale baked in (Ollama applies an adapter at scale 1). `ollama create NAME
  -f DIR/Modelfile` builds the model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from p2p_edge.base import base_spec, file_sha256
from p2p_edge.chat import parse_scale
from p2p_edge.errors import InputError, ModelFileError, P2PError
from p2p_edge.fileio import ensure_private_dir
from p2p_edge.gguf import LoraWeights, export_peft, read_adapter, write_adapter
from p2p_edge.paths import DEFAULT_BASE_ID, PROMPTS_DIR, default_base_model

FORMATS = ("peft", "ollama")
HF_BASE_ID = DEFAULT_BASE_ID.split("@")[0]   # the HF checkpoint the bundled GGUF was converted from
# SmolLM2's chat template (ChatML) in Ollama's Go template syntax
CHATML_TEMPLATE = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                   '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}'
                   '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n')


def export_adapter(adapter: Path, fmt: str, out: Path, *, base_model: Path | None = None) -> list[Path]:
    """Write the export of `adapter` in `fmt` to the folder `out`; return the files written (inside `out`)."""
    if fmt not in FORMATS:
        raise P2PError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    adapter, out = Path(adapter), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "already exists and is not an empty folder; choose another --out")
    base_path = Path(base_model) if base_model else default_base_model()
    base = base_spec(base_path)
    lora, meta = read_adapter(adapter, base)
    scale = parse_scale(meta.get("chat_scale", "1.0")) or 1.0   # absent, unreadable or 0: the trained strength
    ensure_private_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o700)
        if fmt == "peft":
            export_peft(lora, tmp, HF_BASE_ID)
            info = {"format": "p2p-edge-export/1", "base_model": HF_BASE_ID, "chat_scale": scale,
                    "adapter_sha256": file_sha256(adapter), "hypernet": meta.get("hypernet", "")}
            _write_private(tmp / "p2p-edge.json", json.dumps(info, indent=2) + "\n")
        else:
            template = _chat_template(base_path)
            if "<|im_start|>" not in template:
                raise ModelFileError(f"{base_path}: its chat template is not ChatML; the Ollama export knows only "
                                     "ChatML bases (SmolLM2 and the like)")
            baked = LoraWeights(lora.rank, lora.alpha, lora.a, {m: b * scale for m, b in lora.b.items()})
            write_adapter(tmp / "adapter.gguf", baked, base, dtype="f16", metadata={**meta, "chat_scale": "1.0"})
            _write_private(tmp / "Modelfile", modelfile(base_path, scale))
        if out.exists():
            out.rmdir()   # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(p for p in out.iterdir())


def modelfile(base_path: Path, scale: float) -> str:
    system = (PROMPTS_DIR / "system.txt").read_text(encoding="utf-8").strip()
    return "\n".join([
        f"# p2p-edge personal adapter for {HF_BASE_ID} (LoRA scale {scale:g} baked into adapter.gguf).",
        "# Build it with: ollama create NAME -f Modelfile",
        f"FROM {_quoted_path(base_path.resolve())}",
        "ADAPTER ./adapter.gguf",
        f'TEMPLATE """{CHATML_TEMPLATE}"""',
        f'SYSTEM """{system}"""',
        'PARAMETER stop "<|im_end|>"',
        "PARAMETER temperature 0.7",
        "",
    ])


def _quoted_path(p: Path) -> str:
    s = str(p)
    return f'"{s}"' if any(c.isspace() for c in s) else s


def _chat_template(base_path: Path) -> str:
    from gguf import GGUFReader

    try:
        field = GGUFReader(base_path).fields.get("tokenizer.chat_template")
        return str(field.contents()) if field is not None else ""
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{base_path}: cannot read its chat template ({e})") from None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
