"""Optional pieces of an install, and the one-line hint when one is missing.

The base install (``pip install ncnc-toolchain``) scores bundles; training, evaluation and export
need the ``[train]`` extra (PyG, matplotlib, onnx, onnxscript), ``--engine ray`` the ``[ray]``
extra. A stage checks for what it needs when it is imported, so a missing piece is one line naming
the extra, never a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util

from ncnc.core.errors import InputError

DISTRIBUTION = "ncnc-toolchain"


class MissingExtraError(InputError):
    """An optional dependency is not installed; the message says which extra brings it."""


def install_hint(extra: str | None = None) -> str:
    """The pip command that installs ncnc with ``extra``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {DISTRIBUTION}"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules (set to None)
        return False


def require(*modules: str, extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``modules`` can be imported.

    Example: ``require("torch_geometric", extra="train", purpose="training")``.
    """
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise MissingExtraError(f"{purpose} needs {', '.join(missing)}, which this install lacks: "
                                f"{install_hint(extra)}")
