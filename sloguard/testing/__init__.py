"""Helpers for testing SLO-Guard against servers you control."""

from sloguard.testing.stub_server import StubBehavior, start_stub, stub_app

__all__ = ["StubBehavior", "start_stub", "stub_app"]
