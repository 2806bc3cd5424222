"""A training run as named steps with MLflow tracking, and the train task's work: retrain, compare, promote, build."""
