"""Backends that evaluate configurations: the embedded simulator and (later) a real vLLM server."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sloguard.backends._base import BaseBackend

if TYPE_CHECKING:
    from omegaconf import DictConfig

# name -> "module:Class"; imported on use so a backend's heavy dependencies stay optional
BACKENDS: dict[str, str] = {
    "sim": "sloguard.backends.sim:SimBackend",
}


def create_backend(cfg: DictConfig) -> BaseBackend:
    """Instantiate the backend named by ``cfg.backend.name``."""
    module_name, class_name = BACKENDS[cfg.backend.name].split(":")
    backend_cls = getattr(importlib.import_module(module_name), class_name)
    return backend_cls(cfg)


__all__ = ["BACKENDS", "BaseBackend", "create_backend"]
