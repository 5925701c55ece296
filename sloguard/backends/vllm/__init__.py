"""The real vLLM backend: a server per trial, load, /metrics scrapes, classified crashes."""

from sloguard.backends.vllm._server import ServerProcess, free_port, group_members, port_is_free
from sloguard.backends.vllm.backend import VllmBackend, knob_flags, launch_argv

__all__ = [
    "ServerProcess",
    "VllmBackend",
    "free_port",
    "group_members",
    "knob_flags",
    "launch_argv",
    "port_is_free",
]
