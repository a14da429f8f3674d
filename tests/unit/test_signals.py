"""Signals are looked up in sets for every reply the controller sees: the lookup stays in C."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from flowdc.paarc.window import HOST_FAILURES, SERVED
from flowdc.signals import Signal


def test_a_signal_is_found_in_a_set_without_a_python_call() -> None:
    calls: list[str] = []

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    members = list(Signal)
    failures, served = [], []
    sys.setprofile(watch)
    try:
        for signal in members:
            failures.append(signal in HOST_FAILURES)
            served.append(signal in SERVED)
    finally:
        sys.setprofile(None)
    assert calls == []
    assert failures == [s in (Signal.TIMEOUT, Signal.SERVER_ERROR, Signal.CONN_ERROR) for s in members]
    assert served == [s in (Signal.OK, Signal.OBJECT_ERROR) for s in members]
    assert {Signal.OK: 1}[Signal("ok")] == 1  # a member made from its value is the same key
