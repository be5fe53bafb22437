"""The HTTP API of ``efficientdet serve``: predictions, refusals, limits, batching, health."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from efficientdet.deploy.backends import Predictor, build_predictor  # noqa: E402
from efficientdet.deploy.limits import Limits  # noqa: E402
from efficientdet.deploy.security import Security  # noqa: E402
from efficientdet.deploy.server import ServerConfig, create_app  # noqa: E402
from serving import (  # noqa: E402
    CLASSES,
    LiveServer,
    counting,
    png,
    start_serve_command,
    tiny_checkpoint,
    tiny_predictor,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return tiny_predictor(checkpoint)


def test_predict_multipart_and_raw_body(predictor):
    with TestClient(create_app(predictor), base_url="http://localhost") as client:
        answer = client.post("/predict", files={"file": ("red.png", png(), "image/png")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["file_name"], body["width"], body["height"]) == ("red.png", 96, 64)
        assert len(body["detections"]) == 5
        for det in body["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 64  # the upload's own pixels
            assert det["category"] == CLASSES[det["label"]]
            assert det["category_id"] == det["label"]
        raw = client.post("/predict?name=raw.png", content=png(),
                          headers={"content-type": "image/png"})
        assert raw.status_code == 200
        assert raw.json()["detections"] == body["detections"]
        assert raw.json()["file_name"] == "raw.png"


def test_bad_uploads_get_400_naming_the_file(predictor):
    with TestClient(create_app(predictor), base_url="http://localhost") as client:
        text = client.post("/predict", files={"file": ("notes.txt", b"hello, not pixels", "text/plain")})
        assert text.status_code == 400
        assert text.json()["error"] == "notes.txt: not an image (format not recognised)"
        empty = client.post("/predict", files={"file": ("void.jpg", b"", "image/jpeg")})
        assert empty.status_code == 400 and "void.jpg: file is empty" in empty.json()["error"]
        cut = client.post("/predict", files={"file": ("cut.png", png()[:60], "image/png")})
        assert cut.status_code == 400 and cut.json()["error"].startswith("cut.png: truncated")
        no_file = client.post("/predict", data={"note": "no image here"},
                              files={"other": ("", b"", "application/octet-stream")})
        assert no_file.status_code == 400
        assert "the multipart form has no file field" in no_file.json()["error"]
        # The server is still fine afterwards.
        assert client.post("/predict", content=png()).status_code == 200


def test_limits_on_size_and_pixels(predictor):
    config = ServerConfig(limits=Limits(max_upload_bytes=2000, max_pixels=200 * 200))
    with TestClient(create_app(predictor, config), base_url="http://localhost") as client:
        big = client.post("/predict", files={"file": ("big.bmp", b"B" * 5000, "image/bmp")})
        assert big.status_code == 413 and "above the limit of 2000 bytes" in big.json()["error"]
        # A small file with many pixels: refused from its header, before decoding.
        buffer = io.BytesIO()
        Image.new("L", (400, 300)).save(buffer, format="PNG")
        assert len(buffer.getvalue()) < 2000
        wide = client.post("/predict", files={"file": ("wide.png", buffer.getvalue(), "image/png")})
        assert wide.status_code == 413
        assert wide.json()["error"] == (
            "wide.png: image is 400x300 = 120000 pixels, above the limit of 40000"
        )


def test_request_time_limit_gives_504(predictor):
    slow, _ = counting(predictor, delay=1.5)
    config = ServerConfig(request_timeout_s=0.3, warmup=False)
    with TestClient(create_app(slow, config), base_url="http://localhost") as client:
        answer = client.post("/predict", files={"file": ("slow.png", png(), "image/png")})
        assert answer.status_code == 504
        assert answer.json()["error"] == (
            "slow.png: no result within the limit of 0.3 s (the server is busy)"
        )


def test_health_ready_and_web_ui(predictor):
    app = create_app(predictor)
    client = TestClient(app, base_url="http://localhost")  # not started: the model has not run yet
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 503
    assert client.post("/predict", content=png()).status_code == 503
    with TestClient(app, base_url="http://localhost") as started:
        ready = started.get("/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        page = started.get("/")
        assert page.status_code == 200 and "<canvas" in page.text
        assert "<script src" not in page.text and "https://" not in page.text  # no CDN


def _concurrent_posts(url: str, count: int) -> list[httpx.Response]:
    def post(i: int) -> httpx.Response:
        return httpx.post(f"{url}/predict", files={"file": (f"{i}.png", png(), "image/png")},
                          timeout=60)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def test_concurrent_requests_are_batched_on_a_live_server(predictor):
    # Each model call takes 0.4 s longer, so requests pile up while one runs.
    slow, calls = counting(predictor, delay=0.4)
    config = ServerConfig(max_batch=8, batch_wait_ms=50, warmup=False)
    with LiveServer(create_app(slow, config)) as url:
        answers = _concurrent_posts(url, 8)
        stats = httpx.get(f"{url}/stats").json()
    assert [a.status_code for a in answers] == [200] * 8
    assert sum(calls) == 8 and len(calls) < 8, calls
    assert stats["model_calls"] == len(calls) and stats["images"] == 8
    assert max(a.json()["batch_size"] for a in answers) > 1

    single, calls_one = counting(predictor, delay=0.0)
    with LiveServer(create_app(single, ServerConfig(max_batch=1, warmup=False))) as url:
        answers = _concurrent_posts(url, 4)
    assert [a.status_code for a in answers] == [200] * 4 and calls_one == [1, 1, 1, 1]


def test_serve_command_on_localhost(checkpoint):
    process, url = start_serve_command(checkpoint)
    try:
        answer = httpx.post(f"{url}/predict", files={"file": ("a.png", png(), "image/png")})
        assert answer.status_code == 200 and answer.json()["detections"]
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0  # drained (nothing in flight) and exited cleanly


def test_serve_command_needs_weights(capsys):
    from efficientdet.cli import main

    assert main(["serve"]) == 2
    assert "serve needs --weights FILE or --model NAME --pretrained" in capsys.readouterr().err


def _chrome_driver():
    """A headless Chromium through Debian's chromium-driver, or a skip saying what is missing."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=900,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _wait_state(driver) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        in ("done", "error")
    )
    return str(driver.find_element(By.TAG_NAME, "body").get_attribute("data-state"))


def test_web_ui_in_a_browser_draws_the_detections(predictor, tmp_path):
    from selenium.webdriver.common.by import By

    key = "browser-test-key"
    picture = tmp_path / "street.png"
    Image.new("RGB", (320, 240), (90, 140, 200)).save(picture)
    driver = _chrome_driver()
    config = ServerConfig(security=Security(api_key=key))
    try:
        with LiveServer(create_app(predictor, config)) as url:
            expected = httpx.post(
                f"{url}/predict", files={"file": ("street.png", picture.read_bytes(), "image/png")},
                headers={"X-API-Key": key},
            ).json()["detections"]
            driver.get(f"{url}/")
            threshold = driver.find_element(By.ID, "threshold")
            threshold.clear()
            threshold.send_keys("0")
            file_input = driver.find_element(By.ID, "file")
            file_input.send_keys(str(picture))  # no key yet: refused, and the page says why
            refused_state = _wait_state(driver)
            refused = driver.find_element(By.ID, "status").text
            driver.find_element(By.ID, "apikey").send_keys(key)
            driver.execute_script("document.getElementById('file').value = '';"
                                  "document.body.dataset.state = '';")
            file_input.send_keys(str(picture))
            state = _wait_state(driver)
            status = driver.find_element(By.ID, "status").text
            stored = driver.execute_script("return localStorage.getItem('efficientdet-api-key');")
            items = [
                item.get_attribute("data-category")
                for item in driver.find_elements(By.CSS_SELECTOR, "#detections li.detection")
            ]
            canvas_size = driver.execute_script(
                "const c = document.getElementById('canvas'); return [c.width, c.height];"
            )
            drawn = driver.execute_script(
                "const c = document.getElementById('canvas').getContext('2d');"
                "const d = c.getImageData(0, 0, 320, 240).data; let n = 0;"
                "for (let i = 0; i < d.length; i += 4) {"
                "  if (d[i] !== 90 || d[i + 1] !== 140 || d[i + 2] !== 200) n++; }"
                "return n;"
            )
            driver.save_screenshot(str(tmp_path / "webui.png"))
    finally:
        driver.quit()
    assert refused_state == "error" and refused.startswith("HTTP 401: "), refused
    assert refused.endswith("(enter the server's API key above)")
    assert state == "done" and stored == key
    assert status.startswith("street.png: 320x240"), status
    assert len(items) == len(expected) > 0
    assert items == [d["category"] for d in expected]
    assert canvas_size == [320, 240]
    assert drawn > 100  # boxes and labels were painted over the picture


def test_onnx_runtime_backend_serves_the_same_detections(checkpoint, predictor, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import efficientdet as ed
    from efficientdet.deploy.export import export_onnx

    model = ed.create_model("efficientdet_test", num_classes=3, checkpoint=str(checkpoint))
    model = model.eval()
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, onnx_path, batch="dynamic", class_names=CLASSES)
    onnx_predictor = build_predictor(onnx_path, score_threshold=0.0, max_detections=5)
    with TestClient(create_app(onnx_predictor), base_url="http://localhost") as onnx_client, \
            TestClient(create_app(predictor), base_url="http://localhost") as torch_client:
        upload = {"file": ("red.png", png(), "image/png")}
        from_onnx = onnx_client.post("/predict", files=upload)
        from_torch = torch_client.post("/predict", files=upload)
    assert from_onnx.status_code == 200, from_onnx.text
    got, want = from_onnx.json()["detections"], from_torch.json()["detections"]
    assert len(got) == len(want) == 5
    assert [d["category"] for d in got] == [d["category"] for d in want]
    for a, b in zip(got, want, strict=True):
        assert a["box"] == pytest.approx(b["box"], abs=0.05)
