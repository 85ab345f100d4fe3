#!/usr/bin/env bash
# Make a Debian bookworm base image locally with debootstrap, for machines that reach a Debian
# mirror but no image registry. Usage: docker/make-local-base.sh [IMAGE_TAG] [MIRROR]
set -euo pipefail
tag="${1:-local/debian:bookworm}"
# The machine's own mirror: the first active "URIs:" (deb822) or "deb" line, ignoring comments.
detected="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)"
mirror="${2:-$detected}"
mirror="${mirror:-http://deb.debian.org/debian}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag already exists"
    exit 0
fi
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
tar -C "$rootfs" -c . | docker import - "$tag" >/dev/null
echo "made $tag from $mirror"
