#!/bin/sh
# Run as root by the image build (bentofile.yaml: docker.setup_script), before Bouncer's packages.
# The mount points of the two volumes, owned by BentoML's user (uid 1034): a new named volume
# mounted there starts with that owner, so the server can write to it without a chown. Without a
# volume, the server refuses to start (training/registry/preflight.py): nothing would outlive the container.
set -eu
mkdir -p /data /bentoml
chown "$BENTO_USER:$BENTO_USER" /data /bentoml
