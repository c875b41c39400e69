r"""Host input pipeline throughput: mask generators and training samples, per core and with workers.

    python benchmarks/data_pipeline.py --json [--images DIR]

Measures, with OpenCV on one thread:
* ``masks_per_s``: each mask preset at its native size (256 unless ``_512``),
  the process pinned to one core;
* ``train_samples_per_s_core``: the full training pipeline (JPEG decode,
  ``distortions``, 256 crop, ``train_mixed`` mask, float conversion, batching)
  through Grain with no workers, pinned to one core;
* ``train_samples_per_s_workers``: the same with one worker process per core,
  all cores, after the first batch (worker start-up is reported separately).

Inputs, unless ``--images`` names a folder:
the built-in sample photos centre-cropped to 512x512 and saved as JPEG quality 95
in a temporary folder. Rates are medians over ``--repeats`` runs (best run also
given). Single-core rates are also given per CPU-second of this process
(``*_cpu``), which is what a busy shared machine distorts least. Upstream LaMa's
loader beside this one, in one run: benchmarks/compare_pytorch.py.
"""

import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from lama_jax.data import augment  # noqa: E402
from lama_jax.data import masks  # noqa: E402
from lama_jax.configs import common  # noqa: E402
from lama_jax.data import pipeline  # noqa: E402
from lama_jax.data import samples  # noqa: E402

_JSON = flags.DEFINE_bool("json", False, "print one JSON object instead of a table")
_IMAGES = flags.DEFINE_string("images", None, "folder of JPEGs to read (default: built-in samples)")
_MASKS = flags.DEFINE_integer("masks", 400, "masks per preset per repeat")
_SAMPLES = flags.DEFINE_integer("samples", 320, "training samples per repeat")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats; the median is reported")
_WORKERS = flags.DEFINE_integer("workers", 0, "worker processes for the multi-core figure (0: one per core)")

BATCH = 16


def _rate(count: int, run) -> dict[str, float]:
    """Median and best items per wall-clock second, and median items per CPU-second, of ``run``."""
    wall, cpu = [], []
    for _ in range(_REPEATS.value):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(count / (time.perf_counter() - start_wall))
        cpu.append(count / (time.process_time() - start_cpu))
    return {"median": statistics.median(wall), "best": max(wall), "cpu": statistics.median(cpu)}


def write_sample_jpegs(folder: pathlib.Path) -> None:
    """The sample photos as benchmark inputs: 512x512 centre crops, JPEG quality 95."""
    for path in samples.sample_photo_paths():
        square = augment.eval_transform(cv2.imread(str(path)), 512)
        cv2.imwrite(str(folder / f"{path.stem}.jpg"), square, [cv2.IMWRITE_JPEG_QUALITY, 95])


def bench_masks() -> dict[str, float]:
    results = {}
    for name in masks.names():
        if name == "segmentation":  # needs label maps; not a fixed-size benchmark
            continue
        size = 512 if name.endswith("512") else 256
        generator = masks.get(name)
        for i in range(20):
            generator(np.random.default_rng(i), size, size)
        seeds = iter(range(10**9))

        def run(generator=generator, size=size):
            for _ in range(_MASKS.value):
                generator(np.random.default_rng(next(seeds)), size, size)

        results[name] = round(_rate(_MASKS.value, run)["median"], 1)
    return results


def _data_config(images: str, num_workers: int, read_threads: int):
    config = common.data_config()
    config.source, config.train_dir = "folder", images
    config.num_workers = num_workers
    config.read_threads = read_threads
    return config


def bench_train_core(images: str) -> dict[str, float]:
    # No read threads: on one core they only add switching.
    iterator = pipeline.create_train_iterator(_data_config(images, 0, 0), global_batch_size=BATCH, seed=0)
    for _ in range(2):
        next(iterator)
    batches = max(1, _SAMPLES.value // BATCH)

    def run():
        for _ in range(batches):
            next(iterator)

    return _rate(batches * BATCH, run)


def bench_train_workers(images: str, num_workers: int) -> tuple[dict[str, float], float]:
    iterator = pipeline.create_train_iterator(_data_config(images, num_workers, 1), global_batch_size=BATCH,
                                              seed=0)
    try:
        start = time.perf_counter()
        next(iterator)
        startup = time.perf_counter() - start
        batches = max(1, 2 * _SAMPLES.value // BATCH)

        def run():
            for _ in range(batches):
                next(iterator)

        rates = _rate(batches * BATCH, run)
    finally:
        iterator.close()
    return rates, startup


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv):
    del argv
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        images = _IMAGES.value
        if not images:
            write_sample_jpegs(pathlib.Path(tmp))
            images = tmp
        all_cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(all_cpus)})
        try:
            mask_rates = bench_masks()
            core = bench_train_core(images)
        finally:
            os.sched_setaffinity(0, all_cpus)
        num_workers = _WORKERS.value or len(all_cpus)
        workers, startup = bench_train_workers(images, num_workers)

    result = {
        "machine": {"cpu": _cpu_model(), "cores": len(all_cpus), "load_avg_1min": os.getloadavg()[0]},
        "images": _IMAGES.value or "sample photos as 512x512 JPEG q95",
        "masks_per_s": mask_rates,
        "train_samples_per_s_core": round(core["median"], 1),
        "train_samples_per_s_core_best": round(core["best"], 1),
        "train_samples_per_s_core_cpu": round(core["cpu"], 1),
        "train_samples_per_s_workers": round(workers["median"], 1),
        "train_samples_per_s_workers_best": round(workers["best"], 1),
        "workers": num_workers,
        "worker_startup_s": round(startup, 2),
    }
    if _JSON.value:
        print(json.dumps(result))
        return
    print(f"{'preset':<14}{'masks/s':>10}")
    for name, rate in mask_rates.items():
        print(f"{name:<14}{rate:>10.0f}")
    print(f"training samples/s, one core: {core['median']:.0f} (best {core['best']:.0f}, per CPU-second "
          f"{core['cpu']:.0f})")
    print(f"training samples/s, {num_workers} workers: {workers['median']:.0f} (best {workers['best']:.0f}; "
          f"start-up {startup:.1f} s)")


if __name__ == "__main__":
    app.run(main)
