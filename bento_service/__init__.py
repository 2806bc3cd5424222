"""The BentoML service: wires `training` functions to HTTP endpoints, no ML logic here."""
