"""The curated labels: the database schema, the store (relabel, undo, history, promotions), folder sync, labels.csv."""
