"""Method registry: `@register_method` on each adapter class, one factory (`get_method`).

Adapter modules in the top-level `methods` package are discovered automatically (every module but
`common`), so adding a method is adding one file. A user's own adapter is named as
`package.module:Class` and needs no registration.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from benchmark.data.cards import all_cards
from benchmark.engine.contract import TASKS, MethodAdapter
from benchmark.engine.profiles import PROFILES

_REGISTRY: dict[str, type[MethodAdapter]] = {}
_discovered = False
_KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def register_method(cls: type[MethodAdapter]) -> type[MethodAdapter]:
    check_declarations(cls)
    if cls.key in _REGISTRY and _REGISTRY[cls.key] is not cls:
        raise ValueError(f"method key {cls.key!r} registered twice")
    _REGISTRY[cls.key] = cls
    return cls


def check_declarations(cls: type) -> None:
    """What every adapter must declare; raises TypeError naming the class and what is missing."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, MethodAdapter)):
        raise TypeError(f"{name} is not a MethodAdapter subclass")
    if not _KEY.match(cls.key or ""):
        raise TypeError(f"{name}: key {cls.key!r} must be kebab-case")
    if cls.paper is None:
        raise TypeError(f"{name}: declares no paper")
    if not cls.tasks or not set(cls.tasks) <= set(TASKS):
        raise TypeError(f"{name}: tasks {cls.tasks!r} must be a non-empty subset of {TASKS}")
    _check_override_tables(cls, name)


def _check_override_tables(cls: type[MethodAdapter], name: str) -> None:
    """Every name an override table sets must be a parameter of `defaults`: `resolve_config`
    applies the tables by dict update, so a misspelt key ("step_sise") would otherwise add a
    parameter nothing reads and silently leave the default in place. Profile keys must name a
    profile ("quick", or "quick:<dataset>" for one dataset)."""
    known = set(cls.defaults)
    tables = {"dataset_defaults": cls.dataset_defaults, "profile_overrides": cls.profile_overrides}
    for table, entries in tables.items():
        for where, overrides in entries.items():
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"{name}: {table}[{where!r}] sets {', '.join(unknown)}, which "
                                f"`defaults` does not have (known: {', '.join(sorted(known))})")
    for where in cls.profile_overrides:
        if where.partition(":")[0] not in PROFILES:
            raise TypeError(f"{name}: profile_overrides key {where!r} names no profile "
                            f"(profiles: {', '.join(PROFILES)}; one dataset: '<profile>:<dataset>')")
    # A dataset key without a card would never match a run: its overrides would silently not apply.
    cards = set(all_cards())
    named = [(f"dataset_defaults key {d!r}", d) for d in cls.dataset_defaults]
    named += [(f"profile_overrides key {w!r}", w.partition(":")[2])
              for w in cls.profile_overrides if ":" in w]
    for what, dataset in named:
        if dataset not in cards:
            raise TypeError(f"{name}: {what} names no dataset with a protocol card (cards: "
                            f"{', '.join(sorted(cards))})")
    unbounded = sorted(set(cls.bounds) - known)
    if unbounded:
        raise TypeError(f"{name}: bounds name {', '.join(unbounded)}, which `defaults` does not "
                        f"have")


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if info.name != "common" and not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    _discovered = True


def method_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[MethodAdapter]:
    """A registered key (`cluster-contrast`) or a user class path (`package.module:Class`)."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a missing module, a syntax error, or one that raises at import
            raise ValueError(f"--method {name}: cannot import adapter module {module_name!r} "
                             f"({type(exc).__name__}: {exc})") from None
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ValueError(f"--method {name}: module {module_name!r} has no class "
                             f"{class_name!r}")
        try:
            check_declarations(cls)
        except TypeError as exc:
            raise ValueError(f"--method {name}: not a usable adapter: {exc}") from None
        return cls
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
