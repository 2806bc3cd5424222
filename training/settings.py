"""One typed settings object for every path and knob, read from the environment.

Relative paths are resolved against the working directory at the moment the
settings are read, so a process started anywhere can be pointed at a dataset with
``BOUNCER_DATA_DIR``. Nothing is created or loaded here: reading settings has no
side effects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The directory holding the `training` and `bento_service` packages: the project root in a
# checkout (with bentofile.yaml), the bento's src/ inside a built bento.
SOURCE_ROOT = Path(__file__).resolve().parents[1]

EmbedderKind = Literal["pca", "umap"]
BackboneName = Literal["cnn", "efficientnet_lite0", "mobilenet_v3_small", "efficientnet_b0", "auto"]
AugmentSetting = Literal["auto", "none", "light", "photo"]


class Settings(BaseSettings):
    """Bouncer configuration; every field is an env var ``BOUNCER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="BOUNCER_", env_file=".env", extra="ignore", frozen=True)

    # --- paths -----------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Image folder: DATA_DIR/<split>/<class>/<file>.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the label store; default sqlite:///DATA_DIR/labels.db."
    )
    mlflow_dir: Path = Field(
        Path("mlruns"),
        description=(
            "Local MLflow store (sqlite + artifacts) used when MLFLOW_TRACKING_URI is unset;"
            " the artifacts of a tracking database that is not a SQLite file."
        ),
    )
    mlflow_experiment: str = "bouncer"
    model_name: str = Field("bouncer", description="Name of the model in the BentoML model store.")
    model_tag: str | None = Field(
        None,
        description=(
            "Version to serve and evaluate until one is promoted; default the newest version trained on this dataset."
        ),
    )
    state_dir: Path | None = Field(
        None, description="Training lock, progress and logs of the train task; default DATA_DIR/.bouncer."
    )

    # --- dataset ----------------------------------------------------------------
    train_split: str = "train"
    test_split: str = "test"
    max_image_pixels: int = Field(
        40_000_000, description="Images with more pixels are refused (decompression-bomb guard)."
    )
    workers: int | Literal["auto"] = Field(
        "auto", description="Service worker processes (they share the label store); auto: one per CPU core."
    )
    threads: int = Field(
        8,
        ge=1,
        le=256,
        description="Threads per worker for the endpoints other than predict (label store, search, evaluate): "
        "with BentoML's default of 1, one slow evaluate queued every images/history call behind it.",
    )
    ort_threads: int = Field(
        1, ge=0, le=64, description="ONNX Runtime threads per serving worker (0: all cores); 1 is fastest."
    )
    fast_predict: bool = Field(
        True,
        description="Answer predict/predict_batch in a raw ASGI route (same contract, ~1.6x faster); "
        "false: through BentoML's @api handler.",
    )
    access_log: bool = Field(
        True, description="BentoML's access log (one line per request); predict requests only with log_predict."
    )
    log_predict: bool = Field(
        False, description="Also log and trace every predict request (each line/span cost ~4%/~17% of predict)."
    )
    metrics: bool = Field(True, description="Prometheus metrics at /metrics (~4% of a predict's cost).")
    warm_suspects: bool = Field(
        True,
        description="Each worker ranks the suspects in the background at start, so the review page's first "
        "queue does not wait for it (~0.6 s at 10k training images, a minute at 1M).",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Larger uploads are refused with 413.")
    max_request_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Larger request bodies are refused with 413 before they are read (predict_batch sends several).",
    )
    max_json_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Larger JSON request bodies are refused with 413 before they are read (10,000 ids take ~300 KB).",
    )
    max_ids: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="Most image ids one request may name (relabel, confirm, trace, expand): a longer list is a 400 "
        "before any work (a million ids once made a 200 MB error answer).",
    )
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Request body bytes one worker holds at once, counted as they arrive (not as declared); a "
        "request whose next bytes would pass it waits for room (up to 10 s, then 503), so concurrent large "
        "uploads cannot take the worker's memory.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection whose request line and headers have not all arrived this long after it opened "
        "(or after its previous answer) is answered 408 and closed: idle half-requests hold no worker.",
    )
    body_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request body that sends nothing for this long is answered 408 and its connection closed.",
    )
    body_min_bytes_per_s: int = Field(
        16 * 1024,
        ge=1,
        description="After its first BOUNCER_BODY_IDLE_TIMEOUT_S, a request body arriving slower than this on "
        "average is answered 408 and its connection closed (16 KiB/s: a 20 MB photo in under 21 minutes).",
    )
    decode_timeout_s: float = Field(
        30.0,
        gt=0,
        description="An upload that takes longer to decode is answered 503 (the pixel cap already bounds the work).",
    )
    trusted_origins: str = Field(
        "",
        description="Comma-separated origins (https://review.example.org) whose pages may write cross-site; "
        "by default a browser may write only from the server's own origin (the review page).",
    )
    api_token: str | None = Field(
        None, description="If set, relabel/undo/train/promote need 'Authorization: Bearer <token>'."
    )
    model_poll_seconds: float = Field(
        2.0, gt=0, description="How often each worker checks which version is promoted (live swap)."
    )
    batch_max_size: int = Field(64, ge=1, description="Predict batching: most images in one ONNX call.")
    batch_max_latency_ms: int = Field(
        5000, ge=10, description="Predict batching: a request that waited longer for its turn gets 503 (overloaded)."
    )
    build_bento: bool = Field(
        True, description="After a promoted training, run `bentoml build` (skipped where no bentofile.yaml exists)."
    )
    train_niceness: int = Field(10, ge=0, le=19, description="Niceness of the train task's child process.")
    labels_csv_delay_ms: int = Field(
        250,
        ge=0,
        le=60_000,
        description="The service rewrites labels.csv this long after a label change, off the request "
        "(changes in between share one rewrite); 0: at once.",
    )
    export_labels_on_change: bool = Field(
        True, description="Rewrite DATA_DIR/labels.csv after every relabel/undo/import."
    )

    # --- training ---------------------------------------------------------------
    image_size: int | Literal["auto"] = Field(
        "auto",
        description=(
            "Square model input size in pixels (RGB); auto: the median shorter side of the train images, "
            "clipped to 32..160 and rounded to a multiple of 8 (recorded with the model)."
        ),
    )
    backbone: BackboneName = Field(
        "auto",
        description=(
            "auto: for photos (train images mostly in colour, median shorter side >= 64 px) a pretrained "
            "backbone, EfficientNet-Lite0 with the ImageNet weights its package ships (or a keras.applications "
            "one whose weights file is given, or cached when the package is missing); for drawings and thumbnails "
            "the CNN from scratch, which measures better there. cnn, efficientnet_lite0, mobilenet_v3_small or "
            "efficientnet_b0 choose one; the run records which and why (recipe backbone_from)."
        ),
    )
    backbone_weights: str = Field(
        "imagenet",
        description=(
            "Weights of the backbone: imagenet (EfficientNet-Lite0's from its installed package; a "
            "keras.applications backbone's downloaded by Keras once, then cached), none (train from scratch) or "
            "the path of a weights file. Pretrained backbones are frozen: their features are computed once per "
            "image and only the head learns the labels."
        ),
    )
    fine_tune_epochs: int = Field(
        0, ge=0, description="After the head, epochs that also train a pretrained backbone (at a tenth of the rate)."
    )
    epochs: int = Field(15, ge=1, description="Epochs at least; more when min_train_steps needs them.")
    min_train_steps: int = Field(
        600, ge=0, description="Floor on optimisation steps: small datasets get more epochs, not 3 steps an epoch."
    )
    batch_size: int | Literal["auto"] = Field(
        "auto", description="auto: a power of two giving ~20 steps an epoch, between 8 and 64."
    )
    augment: AugmentSetting = Field(
        "auto",
        description=(
            "Training augmentation: light (flips, shifts, zoom), photo (also rotation, crops, colour jitter), "
            "none; auto: photo from 64 px input size, light below."
        ),
    )
    learning_rate: float = Field(2e-3, gt=0)
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.9)
    early_stopping_patience: int = Field(
        3,
        ge=1,
        description="Epochs without improvement of the smoothed val_loss before stopping; checked from mid-budget.",
    )
    seed: int = 42
    out_of_fold_folds: int = Field(
        3, ge=0, le=20, description="k-fold models for out-of-fold probabilities (suspects); 0 or 1 skips them."
    )
    near_duplicate_tolerance: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description=(
            "Max RMS difference (0..1 grey levels) of 16x16 thumbnails for two train images to count as the same "
            "picture. On the demo data a JPEG re-encode (q75), a 3x resize or a +15 brightness shift stays under "
            "0.03; the closest distinct pictures are 0.05 and more apart. 0 keeps only identical thumbnails."
        ),
    )
    fit_sample_max: int = Field(
        200_000,
        ge=100,
        description=(
            "Most train images the embedder (PCA/UMAP) and the OOD score are fitted on; beyond, a seeded sample "
            "(every image is still embedded, indexed and scored). Their statistics of 128-d features settle long "
            "before; at 1M images the full fits held 2-3 GB more than the rest of the training."
        ),
    )
    exact_search_max: int = Field(
        200_000,
        ge=0,
        description=(
            "Most candidates searched exactly for the near-duplicate groups and the out-of-fold feature neighbours "
            "(faiss flat, scikit-learn radius search: n^2 cost, over half an hour at 1M images on two cores). Beyond, "
            "a seeded 8-bit faiss IVF index (4 sqrt(n) lists): near-duplicate pairs it finds are checked on exact "
            "thumbnails (256 bytes an image held instead of 1 KB), neighbours re-ranked by exact cosine "
            "(recall@10 >= 0.95 on clustered embeddings, benchmarks/neighbour_search.py)."
        ),
    )
    out_of_fold_epochs: int | None = Field(
        None, ge=1, description="Epochs per fold model trained from scratch; default half the main budget."
    )
    train_input: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="How a training holds its images: memory (one decoded array, as before), stream (decoded once "
        "into STATE_DIR/decoded, read a batch at a time); auto: memory while the decoded train and test images fit "
        "in input_memory_mb, else stream.",
    )
    input_memory_mb: int = Field(
        256,
        ge=16,
        description="Decoded pixels a training may hold at once: larger datasets stream (train_input auto), and "
        "streamed passes read chunks of a tenth of it. 256 MB: 85,000 images at 32 px, 3,400 at 160 px.",
    )
    train_engine: Literal["local", "ray"] = Field(
        "local",
        description="local: this machine; ray: the out-of-fold models as Ray tasks on any node (pip install -e "
        '".[ray]"; RAY_ADDRESS for a cluster, DATA_DIR and STATE_DIR mounted at the same path on every node).',
    )
    train_task_cpus: int = Field(
        1,
        ge=1,
        le=256,
        description="train_engine ray: CPUs each fold task asks for (and TensorFlow's thread count in it).",
    )
    embedder: EmbedderKind = "pca"
    embedding_dim: int = Field(32, ge=2, description="Dimensions kept by the PCA/UMAP embedder.")
    vector_index: Literal["faiss", "pgvector"] = Field(
        "faiss",
        description="Nearest-neighbour backend: faiss (in each worker, stored with the model version) or "
        "pgvector (in the PostgreSQL label database; needs the vector extension).",
    )
    index_exact_max: int = Field(
        200_000, ge=1, description="Up to this many vectors the faiss index is exact (flat); IVF above."
    )
    index_brute_force_max: int = Field(
        20_000, ge=0, description="A search filter leaving at most this many candidates is answered exactly over them."
    )
    index_embed_inline_max: int = Field(
        256, ge=0, description="Images imported after training embedded during a search; more go to a background job."
    )
    # --- out-of-distribution score, prediction log, drift ----------------------------
    ood_method: Literal["fused", "rmds", "early", "mahalanobis", "knn", "knn+norm", "vim", "energy", "max_logit"] = (
        Field(
            "fused",
            description="How ood_score is computed (training.model.ood; benchmarks/ood.py compares them). fused: "
            "relative Mahalanobis on the embedding or Mahalanobis on the first layers' statistics, the more unusual.",
        )
    )
    ood_scoring: bool = Field(True, description="Score every prediction (false: ood_score and ood are null).")
    ood_quantile: float = Field(
        0.99, gt=0.5, lt=1.0, description="`ood` is true above this quantile of held-out in-distribution scores."
    )
    ood_min_held_out_per_class: int = Field(
        10,
        ge=0,
        description="Fewer held-out (test split) images of any class leave the OOD threshold uncalibrated: "
        "predictions answer ood: null with ood_warning, models/evaluate/train say so.",
    )
    ood_k: int = Field(1, ge=1, le=100, description="knn: the neighbour whose distance is the score.")
    ood_reference_max: int = Field(
        2048, ge=10, description="knn: training embeddings kept as the reference (a random sample)."
    )
    prediction_log: bool = Field(True, description="Log every served prediction (never the image unless log_images).")
    prediction_log_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the prediction log; default the label database when it is PostgreSQL, "
        "else sqlite:///STATE_DIR/predictions.db (its own file: logging never waits on label writes).",
    )
    log_images: Literal["none", "ood", "all"] = Field(
        "none", description="Also keep the uploaded image of OOD predictions or of all, for import-predictions."
    )
    prediction_log_retention_days: float = Field(30.0, gt=0, description="Older logged predictions are deleted.")
    prediction_log_flush_ms: int = Field(
        500, ge=10, description="Predictions are written in batches, off the request path, this often."
    )
    prediction_log_buffer_max: int = Field(
        100_000, ge=100, description="Predictions waiting for a write before new ones are dropped (and counted)."
    )
    drift_alpha: float = Field(0.01, gt=0, lt=0.5, description="Significance level of the drift report's tests.")
    drift_min_predictions: int = Field(30, ge=1, description="A drift window with fewer predictions gets no verdict.")
    parity_tolerance: float = Field(
        1e-3, gt=0, description="Max |ONNX - Keras| allowed on probabilities before registering."
    )

    @field_validator("data_dir", "mlflow_dir", "state_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @property
    def pinned_model_tag(self) -> str | None:
        """BOUNCER_MODEL_TAG, else the model a served bento was built with (``--arg model_tag``), else None."""
        return self.model_tag or _bento_model_tag()

    @property
    def default_model_tag(self) -> str:
        """The model ``bentoml build`` packs: the pinned one, else the newest version (of any dataset).

        Which version serves is decided at start-up by ``registry.resolve_serving_tag``.
        """
        return self.pinned_model_tag or f"{self.model_name}:latest"

    @property
    def worker_count(self) -> int:
        """Each worker holds its own one-thread ONNX session: one per core keeps every core busy."""
        return (os.cpu_count() or 1) if self.workers == "auto" else self.workers

    @property
    def runtime_dir(self) -> Path:
        return self.state_dir or self.data_dir / ".bouncer"

    @property
    def label_db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'labels.db'}"

    @property
    def prediction_log_db_url(self) -> str:
        if self.prediction_log_url:
            return self.prediction_log_url
        if not self.label_db_url.startswith("sqlite"):
            return self.label_db_url
        return f"sqlite:///{self.runtime_dir / 'predictions.db'}"

    @property
    def logged_images_dir(self) -> Path:
        return self.runtime_dir / "logged-images"

    @property
    def labels_csv(self) -> Path:
        return self.data_dir / "labels.csv"

    @property
    def splits(self) -> tuple[str, str]:
        return (self.train_split, self.test_split)

    @property
    def trusted_origin_set(self) -> frozenset[str]:
        """The origins of BOUNCER_TRUSTED_ORIGINS, lower-case, without a trailing slash."""
        return frozenset(o.strip().rstrip("/").lower() for o in self.trusted_origins.split(",") if o.strip())


def _bento_model_tag() -> str | None:
    """The ``model_tag`` a bento was built with (``bentoml build --arg``); set while BentoML loads that bento."""
    import bentoml

    return getattr(bentoml.use_arguments(), "model_tag", None)


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment now (never cached, so tests can change env)."""
    return Settings(**overrides)  # type: ignore[arg-type]
