"""Admin routes: bearer auth (disabled without a token), validated hot reload, paper reset."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import onnx
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app, runtime_of
from service.market.klines import KlineTable
from service.runtime import Runtime

TOKEN = "s3cret-token"


@pytest.fixture
def serve(
    make_settings: Callable[..., Any], btc_5m: KlineTable, feed_factory_maker: Callable[..., Any]
) -> Callable[..., Any]:
    @contextmanager
    def _serve(**overrides: Any) -> Iterator[tuple[TestClient, Runtime]]:
        settings = make_settings(**overrides)
        factory, _ = feed_factory_maker({"BTCUSDT": btc_5m}, 0)
        app = create_app(settings, feed_factory=factory)
        with TestClient(app) as client:
            yield client, runtime_of(app)

    return _serve


def test_admin_routes_disabled_without_token(serve: Callable[..., Any]) -> None:
    with serve() as (client, _):
        for path in ("/admin/reload", "/paper/reset"):
            r = client.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 403
            assert "APPRENTICE_ADMIN_TOKEN" in r.json()["detail"]


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]
)
def test_wrong_or_missing_token_is_401(serve: Callable[..., Any], header: str | None) -> None:
    with serve(admin_token=TOKEN) as (client, _):
        headers = {"Authorization": header} if header else {}
        for path in ("/admin/reload", "/paper/reset"):
            r = client.post(path, headers=headers)
            assert r.status_code == 401, (path, header)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in r.text


def test_reload_swaps_valid_model_and_keeps_old_on_bad_one(
    serve: Callable[..., Any], fixture_model: Any, model_writer: Callable[..., Any]
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(admin_token=TOKEN) as (client, rt):
        assert client.post("/admin/reload", headers=auth).json()["model"]["version"] == "0.0.1"

        model_writer(fixture_model.onnx_path.parent, name="student_v2", version="0.0.2", seed=5)
        r = client.post("/admin/reload", headers=auth, json={"model": "student_v2.onnx"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == {"name": "student_v2", "version": "0.0.2"}
        assert client.get("/model").json()["version"] == "0.0.2"
        text = client.get("/metrics").text
        assert 'apprentice_model_info{name="student_v2",version="0.0.2"} 1.0' in text
        assert "student_fixture" not in text.split("apprentice_model_info")[-1]

        # Tamper with the configured model: its sha256 no longer matches its card.
        tampered = onnx.load(str(fixture_model.onnx_path))
        tampered.doc_string = "changed"
        onnx.save(tampered, str(fixture_model.onnx_path))
        r = client.post("/admin/reload", headers=auth)
        assert r.status_code == 422 and "sha256" in r.json()["detail"]
        assert client.get("/model").json()["version"] == "0.0.2"  # still serving v2
        reg = rt.metrics.registry
        assert reg.get_sample_value("apprentice_model_reloads_total", {"result": "rejected"}) == 1
        assert reg.get_sample_value("apprentice_model_reloads_total", {"result": "ok"}) == 2

        for bad in ("../student_v2.onnx", "/etc/passwd", "student_v2.json"):
            r = client.post("/admin/reload", headers=auth, json={"model": bad})
            assert r.status_code == 422, bad  # the name constraint is in the schema
        r = client.post("/admin/reload", headers=auth, json={"model": "missing.onnx"})
        assert r.status_code == 422 and "not found" in r.json()["detail"]


def test_paper_reset_opens_a_new_account(serve: Callable[..., Any]) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(admin_token=TOKEN) as (client, _):
        assert client.get("/paper").json()["account"] == 1
        r = client.post("/paper/reset", headers=auth, json={"initial_usdt": 5000})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["account"] == 2 and body["equity"] == 5000 and body["trades"] == 0
        assert client.get("/paper").json()["account"] == 2
        r = client.post("/paper/reset", headers=auth, json={"initial_usdt": -1})
        assert r.status_code == 422
