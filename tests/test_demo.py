"""The demo server over real HTTP: page and status, the inpaint round trip, limits and error replies."""

import base64
import http.client
import io
import json
import logging
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from demo_support import SAMPLES, serving, write_tiny_checkpoint
from lama_jax import demo

PHOTO = SAMPLES / "chelsea.jpg"
HEIGHT, WIDTH = 512, 770  # the width is not a multiple of 8: padding and cropping are exercised


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "tiny")


@pytest.fixture(scope="module")
def app(checkpoint_dir):
    return demo.load_app(str(checkpoint_dir))


@pytest.fixture(scope="module")
def server(app):
    with serving(app) as running:
        yield running


def photo_rgb():
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def box_mask(height, width, top, left, bottom, right) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


def multipart(fields):
    boundary = "lama-jax-test-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n\r\n'.encode()
        + data + b"\r\n"
        for name, data in fields.items()
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(server, path, body=None, content_type=None):
    """(status, headers, body bytes) for a GET, or a POST when `body` is given."""
    req = urllib.request.Request(server.url.rstrip("/") + path, data=body)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post_inpaint(server, fields):
    status, _, body = request(server, demo.INPAINT_PATH, *multipart(fields))
    return status, json.loads(body)


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))))


def test_page_script_status_and_samples_are_served(server):
    status, headers, page = request(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for element_id in ("upload", "sample", "brush-size", "erase", "undo", "clear", "inpaint", "result"):
        assert f'id="{element_id}"' in page.decode()
    status, headers, script = request(server, "/demo.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"api/inpaint" in script

    status, _, body = request(server, "/api/status")
    info = json.loads(body)
    assert status == 200 and info["model_loaded"] and info["message"] == ""
    assert "ngf 8, 2 blocks" in info["model"]
    assert "chelsea.jpg" in info["samples"]

    status, headers, sample = request(server, "/samples/chelsea.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and sample == PHOTO.read_bytes()


@pytest.mark.parametrize("path", ["/nothing", "/samples/../setup.cfg", "/samples/%2e%2e/setup.cfg", "/../setup.cfg",
                                  "/samples/LICENSE.md"])
def test_paths_outside_the_page_and_samples_get_404(server, path):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    connection.request("GET", path)  # sent as written: urllib would normalise the dots away
    response = connection.getresponse()
    assert response.status == 404
    assert "no page at" in json.loads(response.read())["error"]
    connection.close()


def test_inpaint_round_trip_changes_only_the_hole_and_compiles_once(server, app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # uploads must not be written anywhere, the working directory included
    rgb = photo_rgb()
    hole = box_mask(HEIGHT, WIDTH, 100, 150, 180, 300)
    fields = {"image": PHOTO.read_bytes(), "mask": png_bytes(hole), "refine": b"0"}

    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    demo.log.addHandler(handler)
    level = demo.log.level
    demo.log.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the logger's isEnabledFor cache
    try:
        status, first = post_inpaint(server, fields)
        assert status == 200, first
        # Said before the model runs: compiling takes long and the page waits for the reply.
        assert logged[0] == "compiling the model for 770x512 px (once per size)..."
        assert logged[1] == first["message"]
        del logged[:]
        status, second = post_inpaint(server, fields)
        assert not any(m.startswith("compiling") for m in logged)
    finally:
        demo.log.removeHandler(handler)
        demo.log.setLevel(level)
    result = decode_data_url(first["result"])
    assert result.shape == rgb.shape and result.dtype == np.uint8
    inside = hole > 0
    np.testing.assert_array_equal(result[~inside], rgb[~inside])
    assert np.any(result[inside] != rgb[inside], axis=-1).mean() > 0.5
    # The same numbers as calling the Inpainter directly.
    expected = app.inpainter(rgb[None] / np.float32(255), inside[None, ..., None].astype(np.float32))[0]
    np.testing.assert_allclose(result[inside], np.round(expected[inside] * 255), atol=1)
    assert first["model_size"] == [WIDTH, HEIGHT] and not first["refined"]

    assert first["compiled"] and first["message"].endswith("(including compiling the model for this size).")
    assert status == 200
    assert not second["compiled"] and "compiling" not in second["message"]
    assert second["message"].startswith("Inpainted 770x512 px in ")
    np.testing.assert_array_equal(decode_data_url(second["result"]), result)
    assert list(tmp_path.iterdir()) == []


def test_photos_above_the_cap_are_inpainted_smaller_and_keep_their_known_pixels(app):
    capped = demo.DemoApp(app.inpainter, limits=demo.Limits(max_inpaint_pixels=160 * 100), samples={})
    rgb = photo_rgb()
    hole = box_mask(HEIGHT, WIDTH, 40, 40, 120, 200)
    with serving(capped) as server:
        status, reply = post_inpaint(server, {"image": PHOTO.read_bytes(), "mask": png_bytes(hole)})
    assert status == 200, reply
    width, height = reply["model_size"]
    assert width * height <= 160 * 100 and abs(width / height - WIDTH / HEIGHT) < 0.05
    assert "is above the 16,000 px that this server inpaints at" in reply["message"]
    assert f"filled at {width}x{height} px" in reply["message"]
    result = decode_data_url(reply["result"])
    assert result.shape == rgb.shape  # full resolution back
    np.testing.assert_array_equal(result[hole == 0], rgb[hole == 0])
    assert np.any(result[hole > 0] != rgb[hole > 0], axis=-1).mean() > 0.5


def _bad_uploads():
    photo = PHOTO.read_bytes()
    hole = png_bytes(box_mask(HEIGHT, WIDTH, 10, 10, 50, 50))
    return {
        "not an image": ({"image": b"plain text, not a photo", "mask": hole}, "image: not a readable image"),
        "truncated jpeg": ({"image": photo[: len(photo) // 3], "mask": hole}, "image: not a readable image"),
        "empty file": ({"image": b"", "mask": hole}, "image: the uploaded file is empty"),
        "tiny image": ({"image": png_bytes(np.zeros((8, 40, 3), np.uint8)), "mask": hole}, "at least 16 px"),
        "mask size": ({"image": photo, "mask": png_bytes(box_mask(64, 64, 0, 0, 8, 8))},
                      "mask: 64x64 px does not match the image's 770x512 px"),
        "mask unreadable": ({"image": photo, "mask": b"GIF89a broken"}, "mask: not a readable PNG"),
        "empty mask": ({"image": photo, "mask": png_bytes(np.zeros((HEIGHT, WIDTH), np.uint8))}, "nothing is painted"),
        "missing mask": ({"image": photo}, "lacks the field(s) mask"),
    }


@pytest.mark.parametrize("case", list(_bad_uploads()))
def test_bad_uploads_get_400_with_a_message_and_the_server_keeps_serving(server, case):
    fields, message = _bad_uploads()[case]
    status, reply = post_inpaint(server, fields)
    assert status == 400
    assert message in reply["error"]
    assert request(server, "/api/status")[0] == 200


class _FailingInpainter:
    def compiled_shapes(self):
        return 0

    def __call__(self, image, mask):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory allocating 9 GiB")


def test_a_failing_model_gets_500_with_the_reason_and_the_server_keeps_serving():
    with serving(demo.DemoApp(_FailingInpainter(), samples={})) as server:
        status, reply = post_inpaint(
            server, {"image": PHOTO.read_bytes(), "mask": png_bytes(box_mask(HEIGHT, WIDTH, 0, 0, 20, 20))})
        assert status == 500
        assert reply["error"] == ("inpainting failed (RuntimeError: RESOURCE_EXHAUSTED: out of memory allocating "
                                  "9 GiB); see the server log")
        assert request(server, "/api/status")[0] == 200


def test_a_body_that_is_not_multipart_gets_400(server):
    status, _, body = request(server, demo.INPAINT_PATH, b'{"image": 1}', "application/json")
    assert status == 400
    assert "multipart/form-data" in json.loads(body)["error"]


def test_oversized_uploads_and_pixel_counts_get_413(app):
    small = demo.DemoApp(app.inpainter, limits=demo.Limits(max_upload_bytes=20_000, max_image_pixels=100_000),
                         samples={})
    with serving(small) as server:
        status, reply = post_inpaint(server, {"image": PHOTO.read_bytes(), "mask": b"x"})
        assert status == 413
        assert reply["error"].endswith("; this server accepts up to 19.5 KiB")

        big_flat_png = png_bytes(np.zeros((400, 400, 3), np.uint8))  # small file, 160,000 pixels
        assert len(big_flat_png) < 20_000
        status, reply = post_inpaint(server, {"image": big_flat_png, "mask": b"x"})
        assert status == 413
        assert reply["error"].startswith("image: 400x400 px (0.2 MP) is above this server's limit of 0.1 MP")
        assert request(server, "/api/status")[0] == 200


def test_without_a_checkpoint_the_page_says_how_to_get_weights():
    with serving(demo.load_app(None)) as server:
        info = json.loads(request(server, "/api/status")[2])
        assert not info["model_loaded"] and not info["refine_available"]
        assert "No trained weights are loaded" in info["message"]
        assert "python -m lama_jax.convert" in info["message"]
        status, reply = post_inpaint(server, {"image": PHOTO.read_bytes(), "mask": b"x"})
    assert status == 503
    assert reply["error"] == demo.NO_WEIGHTS_MESSAGE


def test_refine_checkbox_goes_through_the_refinement_and_its_pixel_budget(app):
    calls = []

    def refine(image, mask):
        calls.append((image.shape, mask.shape))
        return app.inpainter(image, mask)

    refinement = demo.Refinement(inpaint=refine, max_pixels=400 * 300, compiled_shapes=lambda: 0)
    refining = demo.DemoApp(app.inpainter, refinement=refinement, samples={})
    assert refining.status()["refine_available"]
    hole = png_bytes(box_mask(HEIGHT, WIDTH, 10, 10, 50, 50))
    reply = refining.inpaint(PHOTO.read_bytes(), hole, refine=True)
    assert reply["refined"] and reply["message"].startswith("Inpainted 770x512 px with refinement in ")
    assert "above the 0.1 MP that refinement inpaints at" in reply["message"]
    model_width, model_height = reply["model_size"]
    assert calls == [((1, model_height, model_width, 3), (1, model_height, model_width, 1))]
    assert model_width * model_height <= 400 * 300

    plain = demo.DemoApp(app.inpainter, refinement=None, samples={})
    with pytest.raises(demo.RequestError, match="Refinement is not available") as error:
        plain.inpaint(PHOTO.read_bytes(), hole, refine=True)
    assert error.value.status == 400


def test_refinement_for_wraps_lama_jax_refinement(app):
    refinement = demo.refinement_for(app.inpainter)
    rgb = np.asarray(Image.open(PHOTO).convert("RGB").resize((96, 64)))
    hole = np.zeros((64, 96), bool)
    hole[20:40, 30:60] = True
    # Below the refiner's min_side the pyramid has one level: a plain forward, cheap enough for a unit test.
    result, model_size = demo.inpaint_photo(refinement.inpaint, rgb, hole, refinement.max_pixels)
    assert result.shape == rgb.shape and model_size == (96, 64) and refinement.compiled_shapes() == 1
    np.testing.assert_array_equal(result[~hole], rgb[~hole])
    direct = demo.inpaint_photo(app.inpainter, rgb, hole, 10**9)[0]
    np.testing.assert_allclose(result.astype(int), direct.astype(int), atol=2)


def test_cli_binds_loopback_by_default_and_rejects_a_folder_without_weights(tmp_path, capsys):
    args = demo.parse_args([])
    assert (args.host, args.port, args.checkpoint) == ("127.0.0.1", 7860, None)
    assert demo.main(["--checkpoint", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a lama_jax model checkpoint" in err

