"""Keep third-party start-up noise (TensorFlow's, faiss's) out of the user's console.

On a machine without a GPU, TensorFlow 2.21 prints a dozen lines nobody can act on:
"failed call to cuInit", "NodeDef mentions attribute ...", oneDNN and CUDA notices.
faiss logs eleven INFO lines each time it is imported (which CPU build it tries, one
with a ModuleNotFoundError for an AVX-512 build a machine lacks).
The entry points (the ``bouncer`` CLI, the train task's child process, the service
module) call these functions before anything imports TensorFlow; a library module
never does, so importing one changes no process-wide state.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# C++ FATAL only. TensorFlow logs "failed call to cuInit" and "NodeDef mentions attribute
# use_unbounded_threadpool" at ERROR, so level 2 still printed both (measured, TF 2.21 on CPU).
# A Python exception still says what went wrong; TF_CPP_MIN_LOG_LEVEL=0 brings everything back.
TF_CPP_MIN_LOG_LEVEL = "3"
# What TensorFlow's shared libraries print while they load, before any log level applies
# (absl logs to stderr until initialised): the absl banner, then INFO lines such as
# "I0000 00:00:... port.cc:153] oneDNN custom operations are on" and "cudart_stub.cc ...".
_LOAD_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called|I\d{4} )")


# Loggers whose INFO lines say how a library loaded, not what Bouncer did: warnings and errors still show.
QUIET_LOGGERS = ("faiss", "numexpr")


def quiet_tensorflow() -> None:
    """Set TensorFlow's C++ log level for this process and its children, unless the user set one;
    keep faiss's loading lines (QUIET_LOGGERS) below the console's INFO."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow now, dropping the lines its libraries print while loading (others still show).

    For entry points about to train: the library's own ``import tensorflow`` then finds it loaded.
    """
    quiet_tensorflow()
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":  # loaded, or the user wants it all
        import tensorflow  # noqa: F401

        return
    with _stderr_without(_LOAD_NOISE):
        import tensorflow
    # Python-side warnings such as "5 out of the last 5 calls ... triggered tf.function retracing":
    # each out-of-fold model's predict is a new function by design
    tensorflow.get_logger().setLevel("ERROR")


@contextmanager
def _stderr_without(noise: re.Pattern[str]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there, not to ``sys.stderr``) and pass on the lines that are not noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines() if not noise.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
