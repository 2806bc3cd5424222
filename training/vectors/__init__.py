"""Vector indexes: nearest-neighbour search over the images' reduced vectors, filtered by their current labels.

One small interface (:class:`~training.vectors.base.VectorIndex`: add, remove,
vectors_of, search with a :class:`~training.vectors.base.Where` filter) with
backends registered by name, as FiftyOne Brain does: ``faiss`` (embedded, the
default, stored with each model version) and ``pgvector`` (in the PostgreSQL label
database). Labels change after training, so filters read the label store's current
split/label/review state, never the state at training time.
"""
