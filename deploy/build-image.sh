#!/usr/bin/env bash
# Build the project image (deploy/Dockerfile) as xray-pipeline:latest, with podman
# (or docker), from the repository root:   deploy/build-image.sh   (or: make image)
#
# The base: $XRAY_IMAGE_BASE when set; else python:3.11-slim when it is here or can
# be pulled; else, with no image registry in reach, a Debian 12 base made here
# with mmdebstrap from the OS package mirror (localhost/xray-base:bookworm, made
# once and kept). The host's pip configuration and CA bundle go to the build as
# secrets (deploy/pip_build_config.py). Prints the build time and the image size.
#
# Environment: XRAY_IMAGE (the tag, default xray-pipeline:latest), XRAY_IMAGE_BASE,
# CONTAINER_ENGINE (podman or docker), CONTAINERS_CONF (podman's settings; default
# deploy/containers.conf where runc is installed, see that file).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${XRAY_IMAGE:-xray-pipeline:latest}
OFFICIAL_BASE=docker.io/library/python:3.11-slim
LOCAL_BASE=localhost/xray-base:bookworm
# The local base: Python 3.11 and its venv module; passwd for useradd.
LOCAL_BASE_PACKAGES=python3,python3-venv,ca-certificates,passwd

fail() {
  echo "build-image.sh: $*" >&2
  exit 1
}

ENGINE=${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$ENGINE" ] || fail "neither podman nor docker is installed (Debian: apt-get install podman runc mmdebstrap)"
ENGINE=$(basename "$ENGINE")
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] && command -v runc >/dev/null; then
  export CONTAINERS_CONF=$PWD/deploy/containers.conf
fi

have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

local_base() {
  have_image "$LOCAL_BASE" && return 0
  command -v mmdebstrap >/dev/null \
    || fail "no image registry in reach and mmdebstrap is not installed (apt-get install mmdebstrap), or set XRAY_IMAGE_BASE"
  local tar
  tar=$(mktemp --suffix=.tar)
  echo "build-image.sh: no image registry in reach; making $LOCAL_BASE with mmdebstrap" >&2
  mmdebstrap --quiet --variant=minbase --include="$LOCAL_BASE_PACKAGES" bookworm "$tar" \
    || { rm -f "$tar"; fail "mmdebstrap could not make the base (is the Debian mirror in reach?)"; }
  "$ENGINE" import --quiet "$tar" "$LOCAL_BASE" >/dev/null || { rm -f "$tar"; fail "$ENGINE import failed"; }
  rm -f "$tar"
}

if [ -n "${XRAY_IMAGE_BASE:-}" ]; then
  BASE=$XRAY_IMAGE_BASE
elif have_image "$OFFICIAL_BASE" || timeout 120 "$ENGINE" pull --quiet "$OFFICIAL_BASE" >/dev/null 2>&1; then
  BASE=$OFFICIAL_BASE
else
  local_base
  BASE=$LOCAL_BASE
fi

secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT
{ python3 -m pip config list 2>/dev/null || true; } | python3 deploy/pip_build_config.py "$secrets"

build=(build --file deploy/Dockerfile --tag "$IMAGE" --build-arg "BASE=$BASE"
  --secret "id=pip.conf,src=$secrets/pip.conf" --secret "id=pip-cert,src=$secrets/pip-cert")
if [ "$ENGINE" = podman ]; then
  # chroot: RUN steps need no runtime of their own (and no new cgroup or ulimits).
  build+=(--isolation "${BUILDAH_ISOLATION:-chroot}" --layers)
else
  export DOCKER_BUILDKIT=1
fi
previous=$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
start=$(date +%s)
"$ENGINE" "${build[@]}" . || fail "$ENGINE build failed (its output is above)"
# The image this tag named before, now untagged: removed unless a container uses it.
if [ -n "$previous" ] && [ "$previous" != "$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  "$ENGINE" rmi "$previous" >/dev/null 2>&1 || true
fi
seconds=$(($(date +%s) - start))
bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image.sh: built $IMAGE on $BASE in ${seconds} s; image size $((bytes / 1000000)) MB"
