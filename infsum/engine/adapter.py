"""Adapters and the ready model: the adapter file format, which adapter to use, and building the
model the pipeline runs (the loaded HF model + Infini memory + adapter).

An adapter is a safetensors file of the Infini parameters (the gates and any LoRA weights, see
``InfiniModel.infini_state_dict``) with a JSON card (``ADAPTER_FORMAT``, base model, memory settings,
LoRA settings, training record) in its metadata. Loading never unpickles; every failure a user can
cause is a ``CheckpointError`` that names the file.

The adapter choice has one form through the library, ``AdapterChoice``: ``"default"`` (the shipped
adapter for the default model when the file exists, else none), ``None`` (no adapter) or a path
(which must exist). ``resolve_adapter`` is the only place that decodes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from infsum.config import MemoryConfig
from infsum.engine.lora import LORA_MARKER, add_lora_from_state, remove_lora
from infsum.engine.model import InfiniModel
from infsum.errors import CheckpointError

if TYPE_CHECKING:
    from infsum.models import LoadedModel

ADAPTER_FORMAT = "infsum-adapter/1"  # the card's "format"; another value is refused on load
ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"  # shipped with the package
DEFAULT_ADAPTER = ADAPTERS / "smollm2-135m-instruct.safetensors"  # trained for models.DEFAULT_MODEL
DEFAULT = "default"  # the AdapterChoice that means "the shipped adapter, when it fits the model"
AdapterChoice = str | Path | None  # DEFAULT, None (no adapter) or the path of an adapter file


def resolve_adapter(choice: AdapterChoice, *, default_model: bool) -> Path | None:
    """The adapter file ``choice`` names for a model (``default_model``: it is models.DEFAULT_MODEL).

    ``"default"`` gives ``DEFAULT_ADAPTER`` for the default model when the file exists (an install
    without it runs without an adapter) and None for any other model; None gives None; anything
    else is the path of an adapter file, returned as given (``load_adapter`` checks it exists).
    """
    if choice is None:
        return None
    if choice == DEFAULT:
        return DEFAULT_ADAPTER if default_model and DEFAULT_ADAPTER.is_file() else None
    return Path(choice)


def save_adapter(model: InfiniModel, path: str | Path, card: dict[str, Any]) -> None:
    """Save the Infini parameters (``infini_state_dict``) as safetensors with ``card`` as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.infini_state_dict().items()}
    save_file(tensors, str(path), metadata={"card": json.dumps(card)})


def load_adapter(model: InfiniModel, path: str | Path) -> dict[str, Any]:
    """Load Infini parameters saved by ``save_adapter`` into ``model`` -> the adapter's card.

    LoRA weights in the file wrap the projections they name in place, on the HF model ``model``
    runs (projections already wrapped are loaded into as they are). Never unpickles. Raises
    CheckpointError for a missing or damaged file, a card of another format, memory variant or
    update rule than the model's, or weights whose names or shapes do not match the model. A card
    without a format (written by ``save_adapter`` with a hand-made card) is read as this format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter {path} not found: check the path, or run without --adapter")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            card = json.loads((f.metadata() or {}).get("card", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"adapter {path} is damaged ({e}): save it again") from e
    fmt = card.get("format", ADAPTER_FORMAT)
    if fmt != ADAPTER_FORMAT:
        raise CheckpointError(
            f"adapter {path} has format {fmt!r}, this infsum reads {ADAPTER_FORMAT!r}: "
            "use an adapter trained by this version (infsum train) or upgrade infsum"
        )
    mem = card.get("memory") or {}  # cards written before variants existed hold the paper's
    got = (mem.get("variant", "paper"), mem.get("update", model.cfg.update))
    if got != (model.cfg.variant, model.cfg.update):
        raise CheckpointError(
            f"adapter {path} was trained with the {got[0]} memory variant and the {got[1]} rule, this "
            f"model uses {model.cfg.variant} and {model.cfg.update}: use the adapter's settings or retrain"
        )
    if any(LORA_MARKER in k for k in tensors):
        try:
            add_lora_from_state(model, tensors, alpha=(card.get("lora") or {}).get("alpha"))
        except ValueError as e:  # a weight naming no linear layer: trained for another architecture
            raise CheckpointError(f"adapter {path}: {e}: it was trained for another model") from e
    own = model.infini_state_dict()
    if set(tensors) != set(own):
        raise CheckpointError(f"adapter {path} holds {sorted(tensors)}, this model expects {sorted(own)}")
    for k, t in tensors.items():
        if t.shape != own[k].shape:
            raise CheckpointError(
                f"adapter {path}: {k} has shape {tuple(t.shape)}, this model needs "
                f"{tuple(own[k].shape)}: it was trained for another model"
            )
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, t in tensors.items():
            params[k].copy_(t.to(params[k].dtype))
    return card


class Ready(NamedTuple):
    """A ready model: the InfiniModel to run and the adapter file loaded into it (None: none)."""

    model: InfiniModel
    adapter: Path | None


def ready(loaded: LoadedModel, memory: MemoryConfig, adapter: AdapterChoice = DEFAULT) -> Ready:
    """The loaded model converted to Infini-attention under ``memory``, with the ``adapter`` chosen
    (see ``resolve_adapter``) loaded -> ``Ready(model, adapter path or None)``.

    LoRA lives on the shared HF model (``loaded.model``), so this builder owns it: any LoRA an
    earlier build (or training) put there is removed first, and a build without an adapter runs the
    plain HF weights. One ready model per loaded model at a time, then: building another takes the
    earlier one's LoRA away. Raises CheckpointError for an adapter that is missing, damaged or
    does not fit, PatchError for an architecture that cannot get memories.
    """
    path = resolve_adapter(adapter, default_model=loaded.is_default)
    remove_lora(loaded.model)
    model = InfiniModel(loaded.model, memory)
    model.decode_weights = loaded.decode_weights
    if path is not None:
        load_adapter(model, path)
    return Ready(model, path)
