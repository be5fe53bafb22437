"""Who may call the server (API key, Host check, CORS, refusing to listen beyond loopback
without a key), what a failure tells the client and the log (request ids, fixed 5xx
bodies, one access-log line per request), and the Prometheus metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from efficientdet.deploy import security  # noqa: E402
from efficientdet.deploy.backends import Predictor  # noqa: E402
from efficientdet.deploy.security import Security, host_allowed  # noqa: E402
from efficientdet.deploy.server import ServerConfig, create_app  # noqa: E402
from serving import png, tiny_checkpoint, tiny_predictor  # noqa: E402

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return tiny_predictor(checkpoint)


def _client(predictor: Predictor, **security_options) -> TestClient:
    config = ServerConfig(warmup=False, security=Security(**security_options))
    return TestClient(create_app(predictor, config), base_url="http://localhost")


def test_api_key_guards_everything_but_the_open_paths(predictor, monkeypatch):
    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest",
                        lambda a, b: compared.append(1) or real(a, b))
    with _client(predictor, api_key=KEY) as client:
        for path in ("/", "/health", "/ready"):
            assert client.get(path).status_code == 200, path
        for path in ("/stats", "/metrics", "/no-such-page"):
            assert client.get(path).status_code == 401, path
        missing = client.post("/predict", content=png())
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "missing or wrong API key" in missing.json()["error"]
        wrong = client.post("/predict", content=png(), headers={"X-API-Key": KEY + "x"})
        assert wrong.status_code == 401
        bearer = client.post("/predict", content=png(), headers={"Authorization": f"Bearer {KEY}"})
        header = client.post("/predict", content=png(), headers={"X-API-Key": KEY})
        assert bearer.status_code == header.status_code == 200
        assert client.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
    assert compared  # the key is compared with hmac.compare_digest (constant time)
    with _client(predictor, api_key=KEY, metrics_public=True) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/stats").status_code == 401


def test_host_header_must_be_allowed(predictor):
    with _client(predictor) as client:
        assert client.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200
        rebound = client.get("/health", headers={"Host": "attacker.example:8000"})
        assert rebound.status_code == 400
        assert rebound.json()["error"] == (
            "request: host 'attacker.example:8000' is not served here (see --allowed-host)"
        )
    assert host_allowed("api.example.com", ("*.example.com",))
    assert not host_allowed("example.com.evil", ("*.example.com",))
    assert host_allowed("anything:1", ("*",))


def test_cors_is_off_unless_origins_are_given(predictor):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key"}
    with _client(predictor, api_key=KEY) as client:
        answer = client.post("/predict", content=png(), headers={
            "X-API-Key": KEY, "Origin": "http://app.example"})
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in client.options("/predict", headers=preflight).headers
    with _client(predictor, api_key=KEY, cors_origins=("http://app.example",)) as client:
        allowed = client.options("/predict", headers=preflight)  # no key on a preflight
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = client.options("/predict", headers={**preflight, "Origin": "http://evil.example"})
        assert other.status_code == 400


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(checkpoint, capsys, monkeypatch):
    from efficientdet.cli import main

    monkeypatch.delenv("EFFICIENTDET_API_KEY", raising=False)
    assert main(["serve", "--weights", str(checkpoint), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 is reachable from other machines: give an API key" in err
    assert "or --insecure to serve without one" in err
    with pytest.raises(ValueError, match="at least 8 characters"):
        Security(api_key="short")


def test_serve_takes_the_key_from_the_environment_and_serves_its_own_address(monkeypatch):
    from efficientdet.cli import serve as serve_command
    from efficientdet.cli.main import build_parser

    parser = build_parser()
    argv = ["serve", "--weights", "w.safetensors", "--host", "192.0.2.7", "--allowed-host",
            "detect.example.com", "--cors-origin", "https://app.example.com"]
    monkeypatch.setenv("EFFICIENTDET_API_KEY", KEY)
    rules = serve_command._security(parser.parse_args(argv))
    assert rules.api_key == KEY
    assert rules.allowed_hosts == ("localhost", "127.0.0.1", "::1", "192.0.2.7", "detect.example.com")
    assert rules.cors_origins == ("https://app.example.com",)
    monkeypatch.delenv("EFFICIENTDET_API_KEY")
    open_rules = serve_command._security(parser.parse_args(["serve", "--host", "0.0.0.0", "--insecure"]))
    assert open_rules.api_key is None and "0.0.0.0" not in open_rules.allowed_hosts


def test_5xx_carry_a_request_id_and_the_log_has_the_details(predictor, caplog):
    def broken(images):
        raise RuntimeError("CUDA error: out of memory at /secret/path/model.py:42")

    failing = predictor._replace(predict_fn=broken)
    with caplog.at_level(logging.INFO), _client(failing) as client:
        answer = client.post("/predict?name=a.png", content=png())
    assert answer.status_code == 500
    body = answer.json()
    rid = answer.headers["x-request-id"]
    assert body == {"error": "the detector failed; the server log has the details under this "
                    "request id", "request_id": rid}
    assert "secret" not in answer.text and "CUDA" not in answer.text
    details = [r for r in caplog.records if r.exc_info and rid in r.getMessage()]
    assert details and "/secret/path" in str(details[0].exc_info[1])
    access = [r.getMessage() for r in caplog.records if r.name == "efficientdet.access"]
    assert any(line.startswith(f"{rid} POST /predict 500 ") for line in access), access


def test_unexpected_errors_answer_a_fixed_500(predictor, caplog):
    def wrong_labels(images):  # labels past the class names: labelling the answer fails
        return [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1),
                 "labels": torch.tensor([7])} for _ in images]

    with caplog.at_level(logging.INFO), _client(predictor._replace(predict_fn=wrong_labels)) as client:
        answer = client.post("/predict", content=png(), headers={"X-Request-ID": "client-42"})
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error; the server log has the details under "
                             "this request id", "request_id": "client-42"}
    assert answer.headers["x-request-id"] == "client-42"
    assert any(r.exc_info and "client-42" in r.getMessage() for r in caplog.records)


def test_one_access_log_line_per_request(predictor, caplog):
    with caplog.at_level(logging.INFO, logger="efficientdet.access"), _client(predictor) as client:
        ok = client.post("/predict?name=a.png", content=png((96, 64)))
        bad = client.post("/predict", content=b"not an image")
        client.get("/health")
    lines = [r.getMessage() for r in caplog.records if r.name == "efficientdet.access"]
    assert len(lines) == 3, lines
    rid = ok.headers["x-request-id"]
    assert lines[0].startswith(f"{rid} POST /predict 200 ")
    assert " ms client=" in lines[0]
    assert f"bytes={len(png((96, 64)))} image=96x64 batch=1" in lines[0]
    assert lines[1].startswith(f"{bad.headers['x-request-id']} POST /predict 400 ")
    assert lines[1].endswith("image=- batch=-")
    assert " GET /health 200 " in lines[2]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_in_prometheus_format_per_app(predictor):
    with _client(predictor) as client, _client(predictor) as other:
        for _ in range(3):
            assert client.post("/predict", content=png()).status_code == 200
        assert client.post("/predict", content=b"text").status_code == 400
        scraped = client.get("/metrics")
        untouched = _samples(other.get("/metrics").text)
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    got = _samples(scraped.text)
    requests = "efficientdet_requests_total"
    assert got[(requests, (("route", "/predict"), ("status", "200")))] == 3
    assert got[(requests, (("route", "/predict"), ("status", "400")))] == 1
    assert got[("efficientdet_refusals_total", (("reason", "not_an_image"),))] == 1
    assert got[("efficientdet_request_seconds_count", (("route", "/predict"),))] == 4
    assert got[("efficientdet_images_total", ())] == 3
    assert got[("efficientdet_batch_size_count", ())] == 3
    assert got[("efficientdet_batch_size_sum", ())] == 3
    assert got[("efficientdet_model_seconds_count", ())] == 3
    assert got[("efficientdet_model_seconds_sum", ())] > 0
    for gauge in ("efficientdet_in_flight_requests", "efficientdet_queue_images",
                  "efficientdet_queue_pixels"):
        assert got[(gauge, ())] == 0
    # A second app in the same process has its own registry.
    assert untouched[("efficientdet_images_total", ())] == 0
