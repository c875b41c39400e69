"""Draw-a-mask demo: a local web page that inpaints what you paint over.

    python -m lama_jax.demo --checkpoint checkpoints/big_lama     # then open http://127.0.0.1:7860

The page (``lama_jax/demo_static/``: one HTML file, one script, one style
sheet, no build step) lets you upload a photo or pick a bundled sample, paint
the hole with a resizable brush, erase, undo, clear, and press Inpaint. The
browser posts the original file's bytes plus a black/white mask PNG at the
photo's own resolution to ``POST /api/inpaint`` (multipart form); the server
answers with the result PNG, shown beside the input and downloadable
together with the mask.

Why the standard library and not Gradio: the whole server is
``http.server.ThreadingHTTPServer`` plus ~300 lines of vanilla JavaScript on a
canvas, so ``pip install .[demo]`` needs nothing beyond the core
dependencies, starts in a second, works offline, and every request the page
makes is written here. Gradio would bring a large web stack, talks to the
network by default (usage analytics, web fonts) and has changed its image
editor's data format between major versions. An ASGI framework would buy
nothing either: there is one slow endpoint, and model calls are serialised by
a lock because one inpaint already uses every CPU core.

The Refine checkbox runs LaMa's multi-scale feature refinement
(``lama_jax.refinement``) through `refinement_for`, the demo's only coupling
to it; the page hides the option when the app has no refinement.

Model: ``Inpainter`` pads to a multiple of 8 and keeps one jit compilation
per padded size, so the first inpaint at a new size includes compiling and
later ones at that size do not; the reply says which. Photos above
``--max-inpaint-megapixels`` are inpainted at that pixel count and the
prediction is upscaled into the hole only, so the known pixels keep full
resolution; the reply says so. The page shows photos downscaled to fit the
window but always sends the mask at full resolution.

Safety: binds to 127.0.0.1 unless --host says otherwise; the request body
(``--max-upload-mb``) and the decoded pixel count (``--max-megapixels``, checked
from the header before decoding) are bounded; a non-image, a corrupt file or
a mask that does not fit gets a 4xx reply with a message that the page
shows, never a crashed server. Uploads are processed in memory and never
written to disk.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import email.parser
import email.policy
import http
import http.server
import importlib.resources
import io
import ipaddress
import json
import logging
import mimetypes
import pathlib
import sys
import threading
import time
import traceback
import urllib.parse
from typing import Callable, Dict, Optional

import numpy as np
from PIL import Image, ImageOps

from lama_jax import cli

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
INPAINT_PATH = "/api/inpaint"
MIN_SIDE = 16  # = inference.MIN_SIDE, not imported so that the page serves before any JAX import

NO_WEIGHTS_MESSAGE = (
    "No trained weights are loaded, so this page cannot inpaint. Get the official Big LaMa weights "
    "(curl -LJO https://huggingface.co/smartywu/big-lama/resolve/main/big-lama.zip && unzip big-lama.zip), "
    "convert them with `python -m lama_jax.convert --torch-checkpoint big-lama/models/best.ckpt "
    "--output checkpoints/big_lama` (or export a training run with `python -m lama_jax.export`), then restart "
    "with `python -m lama_jax.demo --checkpoint checkpoints/big_lama`."
)

# (file in demo_static/, content type) for each page path; nothing else on disk is reachable.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
}
# The page loads only its own files; `data:`/`blob:` carry images between the canvas and the server.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)

log = logging.getLogger("lama_jax.demo")

# image (1,H,W,3) float32 in [0,1], mask (1,H,W,1), 1 = hole -> (1,H,W,3) float32
InpaintFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may carry and how large an image the model is run on."""

    max_upload_bytes: int = 30 * 2**20
    max_image_pixels: int = 40_000_000
    max_inpaint_pixels: int = 2048 * 2048


class RequestError(Exception):
    """A request the demo refuses; `message` is shown to the user as it is."""

    def __init__(self, status: http.HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Refinement:
    """What the demo needs of LaMa's multi-scale refinement."""

    inpaint: InpaintFn
    max_pixels: int  # larger inputs would come back downscaled, so the demo downscales them itself
    compiled_shapes: Callable[[], int]


def refinement_for(inpainter) -> Refinement:
    """The one coupling to `lama_jax.refinement` (imported here: the page serves before any model code loads)."""
    from lama_jax.refinement import Refiner

    refiner = Refiner.from_inpainter(inpainter)
    return Refinement(
        inpaint=lambda image, mask: refiner(image, mask)[None],  # the Refiner returns (H, W, 3)
        max_pixels=refiner.options.px_budget,
        compiled_shapes=refiner.compiled_shapes,
    )


def sample_photos() -> Dict[str, pathlib.Path]:
    """The sample photos shipped in the package, by file name."""
    from lama_jax.data.samples import sample_photo_paths

    return {path.name: path for path in sample_photo_paths()}


def _pixel_count(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels:,} px"


def _file_size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def decode_photo(data: bytes, limits: Limits) -> np.ndarray:
    """Upload bytes -> uint8 RGB (H, W, 3), EXIF orientation applied as browsers display it."""
    if not data:
        raise RequestError(http.HTTPStatus.BAD_REQUEST, "image: the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            # The header gives the size; refuse oversized images before decoding a single pixel.
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise RequestError(
                    http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"image: {width}x{height} px ({_pixel_count(width * height)}) is above this server's limit of "
                    f"{_pixel_count(limits.max_image_pixels)}; downscale it first",
                )
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except RequestError:
        raise
    except Image.DecompressionBombError as e:
        raise RequestError(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"image: {e}") from None
    except Exception as e:  # any decoder failure on untrusted bytes is the upload's fault
        raise RequestError(
            http.HTTPStatus.BAD_REQUEST,
            f"image: not a readable image ({len(data):,} bytes; {type(e).__name__}: {e})",
        ) from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise RequestError(
            http.HTTPStatus.BAD_REQUEST,
            f"image: {rgb.shape[1]}x{rgb.shape[0]} px is too small; both sides must be at least {MIN_SIDE} px",
        )
    return rgb


def decode_mask(data: bytes, image_shape) -> np.ndarray:
    """Mask PNG (white = hole) -> bool (H, W); it must have the photo's size and contain a hole."""
    height, width = image_shape[:2]
    try:
        with Image.open(io.BytesIO(data)) as mask_image:
            if mask_image.size != (width, height):
                raise RequestError(
                    http.HTTPStatus.BAD_REQUEST,
                    f"mask: {mask_image.size[0]}x{mask_image.size[1]} px does not match the image's {width}x{height} px",
                )
            hole = np.asarray(mask_image.convert("L")) > 127
    except RequestError:
        raise
    except Exception as e:
        raise RequestError(http.HTTPStatus.BAD_REQUEST, f"mask: not a readable PNG ({type(e).__name__}: {e})") from None
    if not hole.any():
        raise RequestError(http.HTTPStatus.BAD_REQUEST, "mask: nothing is painted; paint over what should be removed")
    return hole


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)  # speed over size for a local page
    return buffer.getvalue()


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _run(inpaint: InpaintFn, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    image = rgb[None].astype(np.float32) / 255.0
    mask = hole[None, ..., None].astype(np.float32)
    return _to_uint8(np.asarray(inpaint(image, mask))[0])


def model_size_for(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) the model runs at: the photo's own, or scaled down to about `max_pixels`."""
    if height * width <= max_pixels:
        return width, height
    scale = (max_pixels / (height * width)) ** 0.5
    return max(MIN_SIDE, int(width * scale)), max(MIN_SIDE, int(height * scale))


def inpaint_photo(inpaint: InpaintFn, rgb: np.ndarray, hole: np.ndarray, max_pixels: int):
    """Fills `hole` of uint8 `rgb`; returns (uint8 result, (width, height) the model ran at).

    Above `max_pixels` the model runs on a downscaled copy and its prediction is
    upscaled into the hole. Either way the pixels outside the hole are the input's.
    """
    height, width = hole.shape
    model_size = model_size_for(width, height, max_pixels)
    if model_size == (width, height):
        filled = _run(inpaint, rgb, hole)
    else:
        small_rgb = np.asarray(Image.fromarray(rgb).resize(model_size, Image.Resampling.LANCZOS))
        # Any coverage makes a hole pixel, so the small hole contains the full-size one.
        small_hole = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize(model_size, Image.Resampling.BOX)) > 0
        small_filled = _run(inpaint, small_rgb, small_hole)
        filled = np.asarray(Image.fromarray(small_filled).resize((width, height), Image.Resampling.BICUBIC))
    return np.where(hole[..., None], filled, rgb), model_size


class DemoApp:
    """What the server does, independent of HTTP: status, sample photos, and one inpaint at a time."""

    def __init__(self, inpainter=None, *, limits: Limits = Limits(), refinement: Optional[Refinement] = None,
                 model_description: str = "", samples: Optional[Dict[str, pathlib.Path]] = None):
        self.inpainter = inpainter
        self.refinement = refinement
        self.limits = limits
        self.model_description = model_description
        self.samples = sample_photos() if samples is None else samples
        # One inpaint already uses every core; concurrent ones would only slow each other down.
        self._model_lock = threading.Lock()
        self._model_sizes = set()  # (refine, width, height) inpainted at least once

    def status(self) -> dict:
        if self.refinement is not None:
            refine_note = ""
        elif self.inpainter is None:
            refine_note = "Refinement needs trained weights."
        else:
            refine_note = "Refinement is not available in this demo."
        return {
            "model_loaded": self.inpainter is not None,
            "model": self.model_description,
            "message": "" if self.inpainter is not None else NO_WEIGHTS_MESSAGE,
            "refine_available": self.refinement is not None,
            "refine_note": refine_note,
            "samples": sorted(self.samples),
            "max_upload_bytes": self.limits.max_upload_bytes,
            "max_image_pixels": self.limits.max_image_pixels,
            "max_inpaint_pixels": self.limits.max_inpaint_pixels,
        }

    def require_weights(self) -> None:
        if self.inpainter is None:
            raise RequestError(http.HTTPStatus.SERVICE_UNAVAILABLE, NO_WEIGHTS_MESSAGE)

    def inpaint(self, image_bytes: bytes, mask_bytes: bytes, refine: bool = False) -> dict:
        """Decodes, inpaints and encodes one request; raises RequestError for anything the user can fix."""
        self.require_weights()
        if refine and self.refinement is None:
            raise RequestError(http.HTTPStatus.BAD_REQUEST, self.status()["refine_note"])
        rgb = decode_photo(image_bytes, self.limits)
        hole = decode_mask(mask_bytes, rgb.shape)
        height, width = hole.shape
        if refine:
            model, compiled_shapes = self.refinement.inpaint, self.refinement.compiled_shapes
            max_pixels = min(self.limits.max_inpaint_pixels, self.refinement.max_pixels)
        else:
            model, compiled_shapes = self.inpainter, self.inpainter.compiled_shapes
            max_pixels = self.limits.max_inpaint_pixels
        size_key = (refine, *model_size_for(width, height, max_pixels))
        if size_key not in self._model_sizes:  # said first: compiling can take a minute, with no reply meanwhile
            log.info("compiling the model for %dx%d px%s (once per size)...", size_key[1], size_key[2],
                     " with refinement" if refine else "")
        with self._model_lock:
            compiled_before = compiled_shapes()
            start = time.perf_counter()
            result, (model_width, model_height) = inpaint_photo(model, rgb, hole, max_pixels)
            seconds = time.perf_counter() - start
            compiled = compiled_shapes() > compiled_before
            self._model_sizes.add(size_key)
        message = f"Inpainted {width}x{height} px{' with refinement' if refine else ''} in {seconds:.2f} s"
        message += " (including compiling the model for this size)." if compiled else "."
        log.info("%s", message)
        if (model_width, model_height) != (width, height):
            message += (
                f" The photo ({_pixel_count(width * height)}) is above the {_pixel_count(max_pixels)} that "
                f"{'refinement' if refine else 'this server'} inpaints at: the hole was filled at "
                f"{model_width}x{model_height} px and upscaled; pixels outside the mask keep full resolution."
            )
        return {
            "result": "data:image/png;base64," + base64.b64encode(encode_png(result)).decode("ascii"),
            "width": width,
            "height": height,
            "model_size": [model_width, model_height],
            "seconds": round(seconds, 3),
            "compiled": compiled,
            "refined": refine,
            "message": message,
        }


def parse_form(content_type: Optional[str], body: bytes) -> Dict[str, bytes]:
    """multipart/form-data body -> {field name: bytes}."""
    if not content_type or not content_type.startswith("multipart/form-data"):
        raise RequestError(
            http.HTTPStatus.BAD_REQUEST,
            f"expected a multipart/form-data upload with fields image and mask, got Content-Type {content_type!r}",
        )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise RequestError(http.HTTPStatus.BAD_REQUEST, "malformed multipart/form-data body")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True) or b""
    return fields


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "DemoServer"
    server_version = "lama_jax-demo"

    def _send(self, status: int, body: bytes, content_type: str, extra_headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send_error_json(self, error: RequestError) -> None:
        self._send_json(error.status, {"error": error.message})

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        app = self.server.app
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            extra = {"Content-Security-Policy": CONTENT_SECURITY_POLICY} if name.endswith(".html") else None
            self._send(200, self.server.static[name], content_type, extra)
        elif path == "/api/status":
            self._send_json(200, app.status())
        elif path.startswith("/samples/") and urllib.parse.unquote(path.removeprefix("/samples/")) in app.samples:
            sample = app.samples[urllib.parse.unquote(path.removeprefix("/samples/"))]
            content_type = mimetypes.guess_type(sample.name)[0] or "application/octet-stream"
            self._send(200, sample.read_bytes(), content_type)
        else:
            self._send_error_json(RequestError(http.HTTPStatus.NOT_FOUND, f"no page at {path}"))

    do_HEAD = do_GET

    def _read_body(self) -> bytes:
        limit = self.server.app.limits.max_upload_bytes
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise RequestError(http.HTTPStatus.LENGTH_REQUIRED, "the upload needs a Content-Length header")
        try:
            length = int(length_header)
        except ValueError:
            raise RequestError(http.HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_header!r}") from None
        if length > limit:
            # Reading a moderately oversized body lets the client see the reply instead of a reset connection.
            remaining = length if length <= 4 * limit else 0
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 2**20))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise RequestError(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the upload is {_file_size(length)}; this server accepts up to {_file_size(limit)}",
            )
        return self.rfile.read(length)

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path != INPAINT_PATH:
            self._send_error_json(RequestError(http.HTTPStatus.NOT_FOUND, f"no endpoint at {path}"))
            return
        try:
            body = self._read_body()
            self.server.app.require_weights()  # before judging the upload: without weights nothing can succeed
            fields = parse_form(self.headers.get("Content-Type"), body)
            missing = [name for name in ("image", "mask") if name not in fields]
            if missing:
                raise RequestError(http.HTTPStatus.BAD_REQUEST, f"the upload lacks the field(s) {', '.join(missing)}")
            refine = fields.get("refine", b"").strip().lower() in (b"1", b"true", b"on")
            reply = self.server.app.inpaint(fields["image"], fields["mask"], refine=refine)
        except RequestError as e:
            self._send_error_json(e)
        except Exception as e:  # keep serving; the page shows what went wrong
            log.error("inpaint failed:\n%s", traceback.format_exc())
            self._send_json(500, {"error": f"inpainting failed ({type(e).__name__}: {e}); see the server log"})
        else:
            self._send_json(200, reply)

    def log_message(self, format, *args) -> None:
        log.info("%s - %s", self.address_string(), format % args)


class DemoServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server bound to one DemoApp; port 0 picks a free port (see `url`)."""

    daemon_threads = True

    def __init__(self, app: DemoApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.app = app
        static = importlib.resources.files("lama_jax").joinpath("demo_static")
        self.static = {name: static.joinpath(name).read_bytes() for name, _ in STATIC_FILES.values()}
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def load_app(checkpoint_dir: Optional[str], *, limits: Limits = Limits(), dtype: str = "float32") -> DemoApp:
    """A DemoApp serving the generator in `checkpoint_dir`, or one without weights when it is None."""
    if checkpoint_dir is None:
        return DemoApp(None, limits=limits)
    from lama_jax import checkpoint
    from lama_jax.inference import Inpainter

    inpainter = Inpainter.from_checkpoint(checkpoint_dir, dtype=dtype)
    cfg = inpainter.generator_config
    parameters = checkpoint.parameter_count(inpainter.variables)
    description = (f"{checkpoint_dir}: FFC-ResNet generator, ngf {cfg['ngf']}, {cfg['n_blocks']} blocks, "
                   f"{parameters / 1e6:.1f}M parameters, {dtype}")
    return DemoApp(inpainter, limits=limits, refinement=refinement_for(inpainter), model_description=description)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m lama_jax.demo",
                                description="Serve a local web page that inpaints what you paint over.")
    parser.add_argument("--checkpoint", help="model checkpoint directory (lama_jax.convert or lama_jax.export output)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind; anything but loopback exposes the page to your network "
                             "(default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="model compute type (default %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_bytes / 2**20,
                        help="largest request body accepted (image plus mask), MiB (default %(default)s)")
    parser.add_argument("--max-megapixels", type=float, default=Limits.max_image_pixels / 1e6,
                        help="largest photo accepted, in decoded pixels (default %(default)s)")
    parser.add_argument("--max-inpaint-megapixels", type=float, default=Limits.max_inpaint_pixels / 1e6,
                        help="larger photos are inpainted at this size and the fill is upscaled into the hole "
                             "(default %(default)s)")
    cli.add_compilation_cache_flag(parser)
    args = parser.parse_args(argv)
    for flag in ("max_upload_mb", "max_megapixels", "max_inpaint_megapixels"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if not 0 <= args.port < 65536:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Request lines and failures on stderr; other libraries' loggers keep their own levels.
    if not log.handlers:  # main may run more than once in a process (tests)
        handler = logging.StreamHandler()
        handler.setFormatter(cli.short_log_formatter())
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # absl installs a root handler that would print each line again
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_image_pixels=int(args.max_megapixels * 1e6),
        max_inpaint_pixels=int(args.max_inpaint_megapixels * 1e6),
    )
    from lama_jax import compilation_cache
    from lama_jax.checkpoint import CheckpointError

    compilation_cache.enable(args.compilation_cache_dir)
    try:
        app = load_app(args.checkpoint, limits=limits, dtype=args.dtype)
    except (CheckpointError, OSError) as e:
        return cli.error(e)
    try:
        server = DemoServer(app, args.host, args.port)
    except OSError as e:  # the port is taken, or the address is not this machine's
        return cli.error(f"cannot serve on {args.host}:{args.port} ({e}); choose another --port or --host")
    print(app.model_description or NO_WEIGHTS_MESSAGE, file=sys.stderr)
    if not _is_loopback(args.host):
        print(f"warning: serving on {args.host}: anyone who can reach this machine can use the page", file=sys.stderr)
    with server:
        print(f"serving {server.url} (Ctrl+C stops)", file=sys.stderr)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
