#!/bin/sh
# Run as root by the image build (bentofile.yaml: docker.setup_script), before Bouncer's packages.
# The volumes' mount points, owned by BentoML's user (uid 1034): a new named volume mounted there
# starts with that owner, so the server can write to it without a chown. /data (the dataset) and
# /bentoml (BENTOML_HOME, the model store) must be volumes: without them the server refuses to start
# (training/registry/preflight.py), as nothing would outlive the container. /state is for
# BOUNCER_STATE_DIR=/state, each replica's own train task files when replicas share /data.
set -eu
mkdir -p /data /bentoml /state
chown "$BENTO_USER:$BENTO_USER" /data /bentoml /state
