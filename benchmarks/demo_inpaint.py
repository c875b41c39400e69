"""Demo latency: one inpaint request through `python -m lama_jax.demo`'s HTTP endpoint.

    python benchmarks/demo_inpaint.py --config configs/big_lama.py --json
    python benchmarks/demo_inpaint.py --config configs/tiny.py --json

Posts a sample photo resized to --size² with a box mask to a DemoServer on a
free loopback port, as the page does, and reports the first request
(compilation included), the median request time (upload, decode, model, PNG
encode, reply) and the median model time the server measured. Random
weights: the values do not change the work.
"""

import argparse
import io
import json
import pathlib
import statistics
import sys
import threading
import time
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from lama_jax import checkpoint, demo  # noqa: E402
from lama_jax.config_loader import load_config  # noqa: E402
from lama_jax.data.samples import sample_photo_paths  # noqa: E402
from lama_jax.inference import Inpainter  # noqa: E402
from lama_jax.models import build_generator  # noqa: E402


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def form(image: bytes, mask: bytes):
    boundary = "lama-jax-benchmark"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n\r\n'.encode()
        + data + b"\r\n"
        for name, data in (("image", image), ("mask", mask))
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/big_lama.py")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    generator_config = load_config(args.config).model.generator.to_dict()
    variables = jax.jit(lambda: build_generator(generator_config).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 4)), train=False))()
    app = demo.DemoApp(Inpainter(generator_config, variables), samples={})

    photo = Image.open(sample_photo_paths()[0]).convert("RGB").resize((args.size, args.size), Image.Resampling.LANCZOS)
    image = io.BytesIO()
    photo.save(image, format="JPEG", quality=90)
    hole = np.zeros((args.size, args.size), np.uint8)
    hole[args.size // 4: args.size // 2, args.size // 4: 3 * args.size // 4] = 255
    body, content_type = form(image.getvalue(), png(hole))

    with demo.DemoServer(app, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def post():
            request = urllib.request.Request(server.url + "api/inpaint", data=body,
                                             headers={"Content-Type": content_type})
            start = time.perf_counter()
            with urllib.request.urlopen(request) as response:
                reply = json.loads(response.read())
            return (time.perf_counter() - start) * 1e3, reply["seconds"] * 1e3

        first_ms, _ = post()
        timings = [post() for _ in range(args.repeats)]
        server.shutdown()
        thread.join()

    results = {
        "device": jax.devices()[0].device_kind,
        "generator": {key: generator_config[key] for key in ("ngf", "n_blocks")},
        "parameters": checkpoint.parameter_count(variables),
        "size": args.size,
        "first_request_s": round(first_ms / 1e3, 2),
        "request_ms": round(statistics.median(t for t, _ in timings), 1),
        "model_ms": round(statistics.median(m for _, m in timings), 1),
    }
    if not args.json:
        print("request_ms: HTTP round trip; model_ms: the server's inpaint time; first request compiles",
              file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
