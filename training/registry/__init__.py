"""The BentoML model store: registering and loading versions, which version serves a dataset, building the bento."""
