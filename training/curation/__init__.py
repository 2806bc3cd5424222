"""Finding wrong labels: cleanlab ranking, duplicates, tracing, the embedding index, and the Curator façade."""
