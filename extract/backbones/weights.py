"""Loading a local weights file safely and strictly, and fingerprinting weights."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch

from cache import MidprobeError
from extract.backbones.unpickle import describe, read_torch_file


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a ``.safetensors`` file or a ``torch.save`` file.

    Pickles are read without running any of their code
    (:func:`~extract.backbones.unpickle.read_torch_file`); wrapper dicts ``model`` /
    ``state_dict`` are unwrapped and a DataParallel ``module.`` prefix is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise MidprobeError(f"weights file {path} does not exist; expected a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # corrupt file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MidprobeError(f"cannot read weights file {path} as safetensors ({first}); "
                                "expected a state dict saved with safetensors") from None
    else:
        state = read_torch_file(path)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise MidprobeError(f"weights file {path} holds {describe(state)}, expected a flat name->tensor state dict")
    wrong = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if wrong is not None:
        raise MidprobeError(f"weights file {path}: {wrong!r} is {describe(state[wrong])}, "
                            "expected a flat name->tensor state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _listed(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str,
                drop_prefixes: tuple[str, ...] = ()) -> None:
    """``load_state_dict(strict=True)`` after dropping only the named head prefixes.

    Any other missing or unexpected key, or a shape mismatch, is a one-line error listing them.
    """
    state = {k: v for k, v in state.items() if not (drop_prefixes and k.startswith(drop_prefixes))}
    own = module.state_dict()
    # checkpoints from before PyTorch 0.4.1 have no BatchNorm step counters; they never affect eval features
    for key in set(own) - set(state):
        if key.endswith(".num_batches_tracked"):
            state[key] = torch.zeros_like(own[key])
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        raise MidprobeError(f"weights {source} do not fit the architecture: "
                            f"missing keys [{_listed(missing)}], unexpected keys [{_listed(unexpected)}]")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise MidprobeError(f"weights {source} do not fit the architecture: shape mismatch [{_listed(wrong)}]")
    module.load_state_dict(state, strict=True)
