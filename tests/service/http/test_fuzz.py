"""The API fuzzed against its own OpenAPI schema (schemathesis, bounded and derandomised).

The real app on a real uvicorn server on loopback (with the production connection limits),
warm with real klines; every documented operation gets generated requests, valid and
invalid ones, with and without the admin token, and every answer must be a documented
status, a documented content type and a body that matches its schema; no 5xx at all.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.http.app import create_app
from service.http.connection_limits import uvicorn_options

TOKEN = "fuzz-admin-token"
CHECKS = (
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(make_settings: Any, btc_5m: Any, feed_factory_maker: Any) -> Iterator[str]:
    app_settings = make_settings(admin_token=TOKEN, port=_free_port())
    factory, _ = feed_factory_maker({"BTCUSDT": btc_5m}, 200)  # warm: signals exist
    app = create_app(app_settings, feed_factory=factory)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=app_settings.port,
        log_level="warning",
        access_log=False,
        **uvicorn_options(app_settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fuzzed-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    time.sleep(0.3)  # the scripted backfill reaches the pipeline
    try:
        yield f"http://127.0.0.1:{app_settings.port}"
    finally:
        server.should_exit = True
        thread.join(20)


def test_every_answer_is_documented_and_none_is_a_server_error(served: str) -> None:
    api = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10  # every route of DESIGN section 6, the admin ones included
    calls = [0]
    plan = [(op, mode) for op in operations for mode in GenerationMode]  # valid and invalid
    for operation, mode in plan:

        @settings(
            max_examples=30,
            derandomize=True,  # the same requests every run
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            token = {"Authorization": f"Bearer {TOKEN}"}
            case.call_and_validate(headers=token, checks=CHECKS)
            case.call_and_validate(checks=CHECKS)  # and without the token
            calls[0] += 2

        try:
            fuzz()
        except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, operation.label
    assert calls[0] >= 400
