"""Reproductions: one module per post, named by its spec slug, and the registry that finds them.

``kexue.repro.<module>`` where ``<module>`` is the slug with ``-`` replaced by ``_``
(``vq-rotation-trick`` -> ``kexue.repro.vq_rotation_trick``).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from kexue.repro.base import Check, Claim, Result, Table, check_mode, save_figure, track
from kexue.repro.catalog import BY_SLUG, POSTS, Post

__all__ = [
    "Check",
    "Claim",
    "Post",
    "Result",
    "Table",
    "all_slugs",
    "check_mode",
    "implemented_slugs",
    "is_implemented",
    "load",
    "save_figure",
    "track",
]


def module_name(slug: str) -> str:
    return "kexue.repro." + slug.replace("-", "_")


def all_slugs() -> list[str]:
    """Every post in scope, implemented or not, in catalogue order."""
    return [p.slug for p in POSTS]


def is_implemented(slug: str) -> bool:
    if slug not in BY_SLUG:
        return False
    return importlib.util.find_spec(module_name(slug)) is not None


def implemented_slugs() -> list[str]:
    return [s for s in all_slugs() if is_implemented(s)]


def load(slug: str) -> ModuleType:
    """Import the reproduction module of ``slug`` and validate its contract."""
    if slug not in BY_SLUG:
        raise KeyError(f"unknown slug {slug!r}; valid slugs: {', '.join(all_slugs())}")
    if not is_implemented(slug):
        raise LookupError(f"no reproduction for {slug!r} yet")
    mod = importlib.import_module(module_name(slug))
    claim = getattr(mod, "CLAIM", None)
    if not isinstance(claim, Claim):
        raise TypeError(f"{mod.__name__}.CLAIM must be a kexue.repro.Claim")
    if claim.slug != slug:
        raise ValueError(f"{mod.__name__}.CLAIM.slug is {claim.slug!r}, expected {slug!r}")
    if not callable(getattr(mod, "run", None)):
        raise TypeError(f"{mod.__name__} has no run(mode, seed, out) function")
    return mod
