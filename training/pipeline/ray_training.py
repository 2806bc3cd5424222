"""The Ray engine of ``bouncer train``: the out-of-fold models as Ray tasks on any node.

Each fold model is one task (``BOUNCER_TRAIN_TASK_CPUS`` CPUs, TensorFlow held to that
many threads) that any node may run; the tasks get the fold's row numbers and the
decoded files' paths (a :class:`~training.data.decoded.DecodedFile` pickles as its
path), so on a cluster STATE_DIR must be mounted at the same path on every node, as
DATA_DIR is for ``bouncer score --engine ray``. Results come back through the object
store in the order the tasks finish; each says the node it ran on (``fold_nodes`` in
the version's metadata).

The main model is trained in the driver's process. Not on Ray Train's
``TensorflowTrainer``: it runs ``model.fit`` under ``MultiWorkerMirroredStrategy``, which
Keras 3 does not support (tried here with Keras 3.15 / TF 2.21 / Ray 2.60: every worker
fails in ``fit`` with "Attempt to convert a value (PerReplica...)"; keras-team/keras#20585
and ray-project/ray#47464, both open). Data-parallel training of the main model waits
for that, or for a custom training loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from training.scoring.ray_engine import ray_session
from training.settings import Settings

if TYPE_CHECKING:
    from training.model.out_of_fold import FoldInputs, FoldJob, FoldResult, FoldRunner

log = logging.getLogger(__name__)

ENGINE = "ray"


def _thread_env(cpus: int) -> dict[str, str]:
    """TensorFlow in a task uses the CPUs Ray gave it, not every core (two tasks on 2 cores would fight)."""
    return {
        "TF_NUM_INTRAOP_THREADS": str(cpus),
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": str(cpus),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
    }


def _fold_task(inputs: FoldInputs, job: FoldJob, cpus: int) -> FoldResult:
    """One fold model, on whichever node Ray chose; the result names that node."""
    import ray
    import tensorflow as tf

    from training.model.out_of_fold import fit_fold

    try:  # besides the environment (_thread_env): the task's CPUs bound TensorFlow's threads however it starts
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # a reused worker whose TensorFlow already started: set by its first task
        pass

    return fit_fold(inputs, job, node=ray.get_runtime_context().get_node_id())


class RayEngine:
    """Fold models as Ray tasks; the main model here."""

    name = ENGINE
    needs_files = True

    def __init__(self, ray: ModuleType, settings: Settings) -> None:
        self.ray, self.settings = ray, settings

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {
            "train_engine": self.name,
            "train_task_cpus": self.settings.train_task_cpus,
            "ray_nodes": len(nodes),
        }

    def fold_runner(self) -> FoldRunner:
        return self.run_folds

    def run_folds(self, inputs: FoldInputs, jobs: list[FoldJob]) -> Iterator[FoldResult]:
        """Every fold job submitted at once; results yielded as they finish (a resumed run saves each then)."""
        cpus = self.settings.train_task_cpus
        task = self.ray.remote(num_cpus=cpus, max_retries=0)(_fold_task).options(
            runtime_env={"env_vars": _thread_env(cpus)}
        )
        shared = self.ray.put(inputs)  # paths and small arrays: the images stay in their files
        pending = [task.remote(shared, job, cpus) for job in jobs]
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                result = self.ray.get(done[0])
                log.info("out-of-fold model %d/%d done on node %s", result.fold, inputs.folds, result.node[:12])
                yield result
        finally:
            for ref in pending:  # the run failed or was stopped: no fold keeps training for nobody
                self.ray.cancel(ref, force=True)


@contextmanager
def ray_engine(settings: Settings) -> Iterator[RayEngine]:
    """Ray for the run (the caller's, RAY_ADDRESS's cluster, or a local one shut down after)."""
    with ray_session() as ray:
        yield RayEngine(ray, settings)
