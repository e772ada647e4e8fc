"""``make parity PAPER_CODE=<checkout>``: the paper's own functions side by side with midprobe's.

Imports from a checkout of midvision-probe (@ 984b325) and feeds the paper's functions and
midprobe's the same tensors:

- ``evals.models.probes.ResidualConvUnit`` on a CNN pyramid (``inplace_relu=True``) against
  midprobe's ``inplace-relu`` unit, and on ViT maps against its ``post-activation`` unit, with
  the same convolution weights, on an input with negative entries;
- ``evals.utils.correspondence.project_3dto2d`` against :func:`cache.camera.project`, points in
  front of and behind the camera included.

Prints one line per check (``match``/``MISMATCH`` with the largest difference, or why the paper's
function could not be called) and exits 1 if any check did not match. Without a checkout it says
so in one line and exits 0, so CI needs none of it. The paper's constructors are called by
parameter name (looked up with :mod:`inspect`), so a signature that differs from the one this
script expects is reported, not guessed around.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cache.camera import project
from probe.heads import ResidualConvUnit

CHANNELS = 6


def _kwargs(factory: Callable[..., Any], *, channels: int, transformer: bool) -> dict[str, Any]:
    """Arguments for the paper's unit by parameter name: width, 3x3 kernel, the path, in-place ReLU."""
    out: dict[str, Any] = {}
    for name in inspect.signature(factory).parameters:
        low = name.lower()
        if low in ("self", "args", "kwargs"):
            continue
        if "kernel" in low:
            out[name] = 3
        elif "transformer" in low:
            out[name] = transformer
        elif "inplace" in low:
            out[name] = True
        elif any(k in low for k in ("feature", "channel", "dim")):
            out[name] = channels
    return out


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def check_unit(probes: Any, *, transformer: bool) -> tuple[str, float]:
    """The paper's unit against midprobe's on one input (its convolutions' weights copied)."""
    paper = probes.ResidualConvUnit(**_kwargs(probes.ResidualConvUnit, channels=CHANNELS, transformer=transformer))
    ours = ResidualConvUnit(CHANNELS, kind="post-activation" if transformer else "inplace-relu")
    theirs = _convs(paper)
    if len(theirs) != 2:
        raise RuntimeError(f"expected 2 convolutions in the paper's unit, found {len(theirs)}")
    with torch.no_grad():
        for mine, other in zip((ours.conv1, ours.conv2), theirs):
            other.weight.copy_(mine.weight)
            if other.bias is not None:
                other.bias.copy_(mine.bias)
            elif mine.bias is not None:
                mine.bias.zero_()
    paper.eval()
    x = torch.randn(2, CHANNELS, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x.clone())
        got = paper(x.clone())                       # a clone: the paper's unit may rectify it in place
    return ("match" if torch.allclose(got, expected, atol=1e-5) else "MISMATCH"), float((got - expected).abs().max())


def check_projection(correspondence: Any) -> tuple[str, float]:
    """``project_3dto2d(xyz (N, 3), K (3, 3))`` against :func:`cache.camera.project` (identity pose)."""
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, (64, 3))
    xyz[:, 2] = np.where(np.arange(64) % 4 == 0, -rng.uniform(0.5, 3, 64), rng.uniform(0.5, 3, 64))
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    ours, _ = project(xyz, K, np.eye(4))
    got = correspondence.project_3dto2d(torch.tensor(xyz), torch.tensor(K))
    got = np.asarray(got.detach().cpu().numpy() if hasattr(got, "detach") else got, dtype=np.float64).reshape(-1, 2)
    scale = np.maximum(np.abs(ours), 1.0)             # ~1e9 behind the camera: compare relatively
    diff = float((np.abs(got - ours) / scale).max())
    return ("match" if diff < 1e-6 else "MISMATCH"), diff


CHECKS: dict[str, tuple[str, Callable[[Any], tuple[str, float]]]] = {
    "DPT residual unit, CNN path (inplace_relu=True)": ("evals.models.probes",
                                                        lambda m: check_unit(m, transformer=False)),
    "DPT residual unit, ViT path": ("evals.models.probes", lambda m: check_unit(m, transformer=True)),
    "project_3dto2d (points behind the camera included)": ("evals.utils.correspondence", check_projection),
}


#: Packages a paper module imports (and sets up, at import) for functions these checks do not call:
#: where one is not installed, an inert stand-in takes its place, and the check's line says so.
UNUSED_IMPORTS: dict[str, tuple[str, ...]] = {
    "evals.utils.correspondence": ("faiss", "faiss.contrib", "faiss.contrib.torch_utils"),   # kNN search only
}


def _inert_attribute(name: str) -> Any:
    """A stand-in package's attributes: callables doing nothing (the module's GPU set-up at import);
    dunder names stay absent, so introspection sees an ordinary module."""
    if name.startswith("__"):
        raise AttributeError(name)
    return lambda *args, **kwargs: None


def _import(module_name: str) -> tuple[Any, str]:
    """The paper's module, and a note naming any absent package an empty module stood in for."""
    absent = []
    packages = UNUSED_IMPORTS.get(module_name, ())
    missing = {p.split(".")[0] for p in packages if p.split(".")[0] not in sys.modules
               and importlib.util.find_spec(p.split(".")[0]) is None}
    for package in packages:
        if package.split(".")[0] in missing:
            stand_in = types.ModuleType(package)
            stand_in.__spec__ = importlib.machinery.ModuleSpec(package, None, is_package=True)
            stand_in.__path__ = []
            stand_in.__getattr__ = _inert_attribute
            sys.modules[package] = stand_in
            absent.append(package)
    note = f"; {', '.join(absent)} not installed: an inert stand-in took its place (unused by this check)" if absent else ""
    return importlib.import_module(module_name), note


def run(paper_code: Path) -> int:
    """Every check against the checkout at ``paper_code``; 1 if any did not match. The paper's
    modules and any stand-ins are imported for the checks only and removed after."""
    path, modules = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(paper_code))
    try:
        return _run_checks(paper_code)
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]


def _run_checks(paper_code: Path) -> int:
    failures = 0
    for name, (module_name, check) in CHECKS.items():
        try:
            module, note = _import(module_name)
            verdict, diff = check(module)
            print(f"parity {name}: {verdict} (max difference {diff:.3g}{note})")
            failures += verdict != "match"
        except Exception as exc:                       # the paper's code or its imports: report, go on
            print(f"parity {name}: could not run {module_name} from {paper_code}: {type(exc).__name__}: {exc}")
            failures += 1
    return 1 if failures else 0


def main(argv: list[str] | None = None, prog: str = "python -m bench.parity") -> int:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__)
    p.add_argument("--paper-code", help="a checkout of midvision-probe (984b325); without one, nothing runs")
    args = p.parse_args(argv)
    if not args.paper_code:
        print("parity: skipped (no PAPER_CODE: make parity PAPER_CODE=<checkout of midvision-probe @ 984b325>)")
        return 0
    code = Path(args.paper_code).expanduser()
    if not (code / "evals").is_dir():
        print(f"error: PAPER_CODE={code} has no evals/ folder; expected a checkout of midvision-probe", file=sys.stderr)
        return 2
    return run(code.resolve())


if __name__ == "__main__":
    raise SystemExit(main())
