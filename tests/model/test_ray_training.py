"""`bouncer train --engine ray` on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``).

Each node has one CPU and each fold task asks for one, so the two fold models can only
run at once by running one on each node; the version they make must serve like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_ray_engine_trains_the_folds_on_both_nodes_and_its_version_serves(
    shapes_dataset: Path, settings: Settings, two_nodes: Any
) -> None:
    import bentoml
    import mlflow

    from training.pipeline.training_run import run_training
    from training.registry.serving import open_curator

    nodes = {n["NodeID"] for n in two_nodes.nodes() if n["Alive"]}
    assert len(nodes) == 2
    run = settings.model_copy(update={"train_engine": "ray", "out_of_fold_folds": 2})
    result = run_training(run, epochs=1)

    metadata = bentoml.models.get(result.tag).info.metadata
    assert metadata["train_engine"] == "ray" and metadata["ray_nodes"] == 2
    assert metadata["train_input"] == "stream"  # the tasks read the decoded file, whatever the size
    assert sorted(metadata["fold_nodes"]) == sorted(nodes)  # one fold model on each node
    params = mlflow.get_run(result.mlflow_run_id).data.params
    assert params["train_engine"] == "ray"

    with open_curator(run, model_tag=result.tag) as curator:
        assert curator.model.audit is not None and curator.model.audit.folds == 2
        assert np.allclose(curator.model.audit.out_of_fold.sum(axis=1), 1.0, atol=1e-4)
        assert curator.suspects(5)  # the out-of-fold probabilities rank suspects
        assert curator.evaluate("test").n == 12
        on_ray = curator.model.audit
    assert not list((run.runtime_dir / "checkpoints").glob("*/*"))

    # the same data and seed on the local engine: the same model, and fold models that agree
    local = run_training(run.model_copy(update={"train_engine": "local", "train_input": "stream"}), epochs=1)
    assert local.metrics == result.metrics  # the main model trains in this process on either engine
    with open_curator(run, model_tag=local.tag) as curator:
        here = curator.model.audit
        assert here is not None and list(here.image_ids) == list(on_ray.image_ids)
        # a fold task runs TensorFlow on one thread, the local engine on all: float sums in another order
        assert float(np.abs(here.out_of_fold - on_ray.out_of_fold).max()) < 0.05
        assert (here.out_of_fold.argmax(axis=1) == on_ray.out_of_fold.argmax(axis=1)).mean() >= 0.95


def test_train_says_which_engine_a_typo_is_not(shapes_dataset: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    result = CliRunner().invoke(app, ["-q", "train", "--engine", "spark"])
    assert result.exit_code != 0
    assert "local" in result.output and "ray" in result.output
