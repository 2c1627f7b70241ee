#!/usr/bin/env bash
# Build a local base image from Debian's packages, for machines that cannot pull images from a
# registry (Docker Hub's python, postgres and redis are then out of reach, Debian's archive is not):
#
#   bash deploy/build-base.sh            # -> image vlstudio-base:bookworm
#   docker build --build-arg BASE_IMAGE=vlstudio-base:bookworm ...
#
# debootstrap --variant=minbase bookworm + python3, venv and CA certificates, then `docker import`.
# The host's extra CA certificates (/usr/local/share/ca-certificates) are trusted inside, and pip
# is pointed at the system bundle, so builds work behind a TLS-inspecting proxy the host trusts.
# Does nothing when the image already exists (FORCE=1 rebuilds it).
set -euo pipefail

IMAGE=${BASE_IMAGE:-vlstudio-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE: present (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "debootstrap is missing: apt-get install debootstrap" >&2
  exit 1
}

root=$(mktemp -d /var/tmp/vlstudio-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base image $IMAGE: debootstrap $SUITE into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$root" ${DEBIAN_MIRROR:-} > "$root.log" 2>&1 || {
  echo "debootstrap failed; the end of its log:" >&2
  tail -n 30 "$root.log" >&2
  exit 1
}
rm -f "$root.log"

# The host's apt sources when it runs the same suite (its mirror, updates and security archives),
# else debootstrap's one line; no package lists or caches in the layer.
if grep -qs "VERSION_CODENAME=$SUITE" /etc/os-release; then
  rm -f "$root/etc/apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    if [ -f "$f" ]; then cp "$f" "$root$f"; fi
  done
fi
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb

tar -C "$root" -c . | docker import \
  -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE: built ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
