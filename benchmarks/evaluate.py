"""Throughput of the evaluation metrics (images/s) on random 256x256 data and random weights.

    python benchmarks/evaluate.py --json

Each figure is the median over --repeats timed runs after one compiling warm-up,
for one batch of --batch-size (inpainted, image) pairs:
* ssim_psnr: SSIM + PSNR + L1 in one compiled call;
* lpips: VGG16 LPIPS (both images through VGG);
* fid_features: Inception pool3 features of both images (FID's per-image cost; the
  final sqrtm is a one-off per set and is timed separately as fid_sqrtm_2048_s);
* folder_ssim_psnr: `evaluate_folders` end to end on PNG files (decode included).
With torch installed, torch_ssim is LaMa's SSIM formula in PyTorch on the same data.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from lama_jax import evaluate, metrics  # noqa: E402
from lama_jax.models import inception, lpips  # noqa: E402


def _median_seconds(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_ssim_seconds(a, b, repeats):
    import torch
    import torch.nn.functional as F

    g = torch.from_numpy(metrics.gaussian_window())
    window = (g[:, None] @ g[None, :]).expand(3, 1, 11, 11).contiguous()
    ta, tb = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (a, b))

    def run():
        with torch.no_grad():
            blur = lambda x: F.conv2d(x, window, padding=5, groups=3)  # noqa: E731
            mu1, mu2 = blur(ta), blur(tb)
            s1, s2, s12 = blur(ta * ta) - mu1**2, blur(tb * tb) - mu2**2, blur(ta * tb) - mu1 * mu2
            m = ((2 * mu1 * mu2 + 1e-4) * (2 * s12 + 9e-4)) / ((mu1**2 + mu2**2 + 1e-4) * (s1 + s2 + 9e-4))
            return m.mean([1, 2, 3])

    return _median_seconds(run, repeats)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sqrtm", action="store_true")
    args = parser.parse_args()

    n, size = args.batch_size, args.size
    rng = np.random.default_rng(0)
    image = rng.random((n, size, size, 3), dtype=np.float32)
    inpainted = np.clip(image + 0.1 * rng.standard_normal(image.shape).astype(np.float32), 0, 1)
    image_dev, inpainted_dev = jax.device_put(image), jax.device_put(inpainted)

    lpips_vars = lpips.init_lpips_variables(jax.random.key(0))
    inception_vars = inception.init_inception_variables(jax.random.key(1))
    lpips_fn = jax.jit(lpips.lpips_distance)
    features_fn = jax.jit(inception.inception_features)

    seconds = {
        "ssim_psnr": _median_seconds(lambda: metrics.pairwise_metrics(inpainted_dev, image_dev), args.repeats),
        "lpips": _median_seconds(lambda: lpips_fn(lpips_vars, inpainted_dev, image_dev), args.repeats),
        "fid_features": _median_seconds(
            lambda: (features_fn(inception_vars, inpainted_dev), features_fn(inception_vars, image_dev)),
            args.repeats,
        ),
    }
    result = {f"{name}_images_per_s": n / s for name, s in seconds.items()}

    with tempfile.TemporaryDirectory() as tmp:
        data, preds = os.path.join(tmp, "data"), os.path.join(tmp, "preds")
        os.makedirs(data), os.makedirs(preds)
        count = 4 * n
        for i in range(count):
            pixels = (image[i % n] * 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(data, f"img{i:03d}.png"))
            Image.fromarray(np.zeros((size, size), np.uint8)).save(os.path.join(data, f"img{i:03d}_mask000.png"))
            prediction = (inpainted[i % n] * 255).astype(np.uint8)
            Image.fromarray(prediction).save(os.path.join(preds, f"img{i:03d}_mask000.png"))
        evaluate.evaluate_folders(data, preds, ("ssim", "psnr"), batch_size=n)  # compile
        report = evaluate.evaluate_folders(data, preds, ("ssim", "psnr"), batch_size=n)
        result["folder_ssim_psnr_images_per_s"] = report["images_per_s"]

    try:
        result["torch_ssim_images_per_s"] = n / _torch_ssim_seconds(image, inpainted, args.repeats)
    except ImportError:
        pass
    if not args.skip_sqrtm:
        feats = rng.standard_normal((4096, 2048))
        start = time.perf_counter()
        metrics.fid_from_features(feats[:2048], feats[2048:])
        result["fid_sqrtm_2048_s"] = time.perf_counter() - start

    result.update(batch_size=n, size=size, backend=jax.default_backend(), devices=jax.device_count())
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
