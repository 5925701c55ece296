"""Backends that evaluate configurations: the embedded simulator and a real vLLM server."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sloguard.backends._base import BackendSettings, BaseBackend
from sloguard.exceptions import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

# name -> "module:Class"; imported on use so a backend's heavy dependencies stay optional
BACKENDS: dict[str, str] = {
    "sim": "sloguard.backends.sim:SimBackend",
    "vllm": "sloguard.backends.vllm:VllmBackend",
    "vllm-cpu": "sloguard.backends.vllm:VllmBackend",
}


def backend_class(name: str) -> type[BaseBackend]:
    """The backend class registered as ``name``.

    Raises:
        ConfigError: No backend has that name.
    """
    if name not in BACKENDS:
        raise ConfigError(
            f"backend.name={name!r} is not known; choose one of: {', '.join(sorted(BACKENDS))}"
        )
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_backend(cfg: DictConfig) -> BaseBackend:
    """Instantiate the backend named by ``cfg.backend.name``."""
    return backend_class(cfg.backend.name)(BackendSettings.of(cfg))


__all__ = ["BACKENDS", "BackendSettings", "BaseBackend", "backend_class", "create_backend"]
