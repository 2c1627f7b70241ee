#!/usr/bin/env bash
# docker-compose with docker-compose.yml + docker-compose.test.yml, for a machine that cannot pull
# images (docs/deploy.md): every argument goes to docker-compose.
#
#   VLSTUDIO_SECRET_KEY=... VLSTUDIO_FIRST_ADMIN_PASSWORD=... bash deploy/compose-local.sh up -d --build
#   bash deploy/compose-local.sh logs api ; bash deploy/compose-local.sh down
#
# Compose v1 (Debian's docker-compose 1.29) merges lists and cannot unset a key from an override
# file, so two things production declares are dropped here from the configuration Compose itself
# merged: the API's published port (containers use host networking, which takes no port
# bindings) and, on an engine without the NVIDIA runtime, the worker's GPU reservation. Nothing
# else is changed. The merged file holds the secrets: it is private and removed on exit.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-$(basename "$repo")}
gpu=0
if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then gpu=1; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
docker-compose --project-directory "$repo" -f "$repo/docker-compose.yml" -f "$repo/docker-compose.test.yml" config \
  > "$work/merged.yml"
GPU=$gpu python3 - "$work/merged.yml" <<'PY'
import os
import sys

import yaml

path = sys.argv[1]
cfg = yaml.safe_load(open(path))
for name, svc in cfg["services"].items():
    if svc.get("network_mode") == "host":
        svc.pop("ports", None)
    if os.environ["GPU"] != "1":
        reservations = svc.get("deploy", {}).get("resources", {}).get("reservations", {})
        reservations.pop("devices", None)
        if name == "worker":
            print("compose-local: no NVIDIA runtime in this engine; the worker reserves no GPU", file=sys.stderr)
yaml.safe_dump(cfg, open(path, "w"))
PY
docker-compose --project-directory "$repo" -f "$work/merged.yml" "$@"
