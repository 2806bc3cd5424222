"""Batch scoring: probabilities, embeddings and reduced vectors of every image of a dataset folder.

Two engines write the same shards (:mod:`training.model.scores`): ``local`` (a thread pool
decoding, one ONNX session on every core) and ``ray`` (Ray Data actors, each with its own
session; a laptop's cores or a cluster). Both decode with the serving preprocessing and run
the registered ONNX graph and embedder, so a score equals what ``predict`` answers.
"""
