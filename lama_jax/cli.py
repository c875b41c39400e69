"""What every lama_jax command line shares, so that they behave alike.

Conventions (train, convert, export, predict, evaluate, demo, data.gen_masks,
data.build_tfds):

* Usage and input mistakes print one line, ``error: <what is wrong and what
  would be right>``, on stderr and exit non-zero, without a traceback; an
  unexpected internal error keeps its traceback. Exit status 2 is a usage
  mistake (a flag missing, unknown or of the wrong type), 1 an input the run
  cannot use (a missing file, a checkpoint that does not fit); predict keeps
  its documented statuses (failed-sample count, 255 when it cannot start).
* `main(argv=None) -> int` is each module's entry point (`sys.exit(main())`),
  callable in-process with a list of arguments.
* argparse everywhere but `train`, whose `--config.key=value` overrides need
  ml_collections' absl flags. Multi-word argparse flags are spelled with
  hyphens (`--batch-size`), their help is written for users and the
  description is one sentence; heavy modules (JAX, the models) are imported
  after the arguments are parsed, so `--help` and usage mistakes answer at once.
* Log lines are short, ``HH:MM:SS LEVEL message``, unless `--verbose`.
* Every tool that compiles takes `--compilation-cache-dir` (train: `config.compilation_cache_dir`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

SHORT_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
SHORT_LOG_DATEFMT = "%H:%M:%S"
USAGE_STATUS = 2
INPUT_STATUS = 1


def one_line(message: object) -> str:
    """`message` on one line: a multi-line explanation joined with "; "."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def error(message: object, status: int = INPUT_STATUS) -> int:
    """Prints ``error: message`` (one line) to stderr and returns `status`, for `return cli.error(...)`."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return status


def exit_with_error(message: object, status: int = USAGE_STATUS) -> NoReturn:
    sys.exit(error(message, status))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one ``error: ...`` line (argparse's own prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        exit_with_error(f"{message} (see {self.prog} --help)", USAGE_STATUS)


def add_compilation_cache_flag(parser: argparse.ArgumentParser) -> None:
    """`--compilation-cache-dir` (also spelt `--compilation_cache_dir`), for `lama_jax.compilation_cache.enable`."""
    parser.add_argument("--compilation-cache-dir", "--compilation_cache_dir", dest="compilation_cache_dir",
                        default=None, help="JAX's persistent compilation cache: later runs skip compiling "
                        "(default $JAX_COMPILATION_CACHE_DIR or ~/.cache/lama_jax/jax_compilation_cache; '' = off)")


def short_log_formatter() -> logging.Formatter:
    return logging.Formatter(SHORT_LOG_FORMAT, SHORT_LOG_DATEFMT)
