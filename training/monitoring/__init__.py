"""Watching what is served: the prediction log, drift reports, and importing logged images for labelling."""
