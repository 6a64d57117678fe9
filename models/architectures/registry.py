"""A name → builder registry that refuses duplicates (torchvision's rule: one name, one model)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under ``name``; raises ``ValueError`` if the name is taken."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"architecture {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return wrap


def build(name: str, **kwargs: object) -> nn.Module:
    """Instantiate the registered architecture ``name``; ``KeyError`` lists the known names otherwise."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_BUILDERS))}") from None
    return builder(**kwargs)


def names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_BUILDERS)
