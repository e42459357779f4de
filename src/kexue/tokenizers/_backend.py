"""Choice between the compiled core (``kexue.tokenizers._core``) and the pure-Python reference.

``core="auto"`` uses the compiled extension when it was built and the reference otherwise (same
results, much slower); ``core="compiled"`` raises :class:`ImportError` with build instructions when the
extension is missing; ``core="python"`` always uses the reference.
"""

from __future__ import annotations

from types import ModuleType

from kexue.tokenizers import reference

try:  # the extension is optional: the package must import without it
    from kexue.tokenizers import _core as _compiled
except ImportError:  # pragma: no cover - depends on the build
    _compiled = None

CORES = ("auto", "compiled", "python")
HAVE_COMPILED_CORE = _compiled is not None


def resolve_core(core: str) -> ModuleType:
    """The module providing ``UnigramCore``, ``NgramTable`` and ``BNLMCore`` for ``core``."""
    if core not in CORES:
        raise ValueError(f"core must be one of {CORES}, got {core!r}")
    if core == "python" or (core == "auto" and _compiled is None):
        return reference
    if _compiled is None:
        raise ImportError(
            "kexue.tokenizers._core is not built; build it with `pip install -e .` (needs a C compiler "
            "and Cython) or `python setup.py build_ext --inplace`, or pass core='python'"
        )
    return _compiled


def core_name(module: ModuleType) -> str:
    return "python" if module is reference else "compiled"
