"""The start-up check: the installed faust has what streams.transport relies on, or the worker
refuses to start naming the version and what is missing."""

from __future__ import annotations

import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import TRANSPORTS

from streams.transport import FAUST_VERSION, TransportMismatch, check_faust
from streams.transport.driver import SCHEME, Transport, broker_url


def test_the_installed_faust_passes_and_the_driver_is_registered() -> None:
    check_faust()
    assert TRANSPORTS.by_url(broker_url("127.0.0.1:19092")) is Transport
    assert broker_url("a:1,b:2") == f"{SCHEME}://a:1;{SCHEME}://b:2"


def test_a_faust_without_what_the_transport_overrides_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as a faust release that renamed the method would look
    monkeypatch.delattr(faust_consumer.Consumer, "_add_gap")
    with pytest.raises(TransportMismatch) as info:
        check_faust()
    text = str(info.value)
    assert "Consumer._add_gap" in text
    assert "faust-streaming 0.15.3 lacks" in text
    assert f"faust-streaming=={FAUST_VERSION}" in text
