"""The architectures ``build_network`` knows, as torchvision's ``models/_api.py`` keeps them: each architecture
module registers its builder with :func:`register_model`; :func:`get_model_builder` and :func:`list_models` answer
from that one table (the CLI's validation and every "expected one of ..." message list its names).

A builder turns the network input into the network output inside a :class:`~.common.NetContext`::

    @register_model("mobilenet_v2")
    def build_v2(ctx: NetContext, x: Tensor, *, alpha: float, classes: int, include_top: bool) -> Tensor: ...

``check_alpha`` (optional) refuses a width multiplier this architecture cannot build, before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sepconv.export.errors import ExportError

if TYPE_CHECKING:
    from sepconv.export.graph import Tensor
    from sepconv.export.networks.common import NetContext


class NetworkBuilder(Protocol):
    def __call__(self, ctx: NetContext, x: Tensor, *, alpha: float, classes: int, include_top: bool) -> Tensor:
        ...


@dataclass(frozen=True)
class Architecture:
    name: str
    build: NetworkBuilder
    check_alpha: Callable[[float], None] | None = None


_REGISTRY: dict[str, Architecture] = {}


def register_model(name: str, *, check_alpha: Callable[[float], None] | None = None,
                   ) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Decorator: register ``fn`` as the builder of architecture ``name`` (a name is registered once)."""

    def wrapper(fn: NetworkBuilder) -> NetworkBuilder:
        if name in _REGISTRY:
            raise ValueError(f"an architecture named {name!r} is already registered")
        _REGISTRY[name] = Architecture(name, fn, check_alpha)
        return fn

    return wrapper


def list_models() -> tuple[str, ...]:
    """The registered architecture names, in registration order."""
    return tuple(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    """The registered :class:`Architecture` (raises :class:`ExportError` naming the known ones)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ExportError(f"unknown architecture {name!r}; expected one of {', '.join(list_models())}") from None


def get_model_builder(name: str) -> NetworkBuilder:
    """The builder registered as ``name`` (raises :class:`ExportError` naming the known ones)."""
    return get_architecture(name).build
