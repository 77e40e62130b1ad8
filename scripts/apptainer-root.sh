#!/usr/bin/env bash
# The real Apptainer for the tests, in a Debian root of its own, cached
# outside the clone (scripts/setup.sh --test calls this):
#
#   scripts/apptainer-root.sh [--rebuild] [USER]
#
# Debian's unstable suite (sid) packages Apptainer 1.4.5 with the monitoring
# socket; it needs a newer libc than Debian 12's, hence a root of its own,
# built with debootstrap in about a minute (400 MB). The root is built under
# a temporary name and renamed when complete, so an interrupted build is
# never taken for the cache; its stamp file (.apptheus-root) records the
# recipe and the Apptainer version installed. A root without a stamp, or
# with an older recipe, is built again. USER (default apptheus-test, made by
# setup.sh) is copied into the root's passwd and group with a home there:
# Apptainer runs inside the root and reads its files.
#
# APPTHEUS_CACHE_DIR (default /var/cache/apptheus) chooses the cache,
# APPTHEUS_DEBIAN_MIRROR (default http://deb.debian.org/debian) the mirror.
set -euo pipefail

# Bump when what is built changes: cached roots of older recipes are rebuilt.
RECIPE=1
SUITE=sid
INCLUDE=apptainer,squashfs-tools,busybox-static,procps
NEED_MB=800

rebuild=0
user=apptheus-test
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    -*) echo "apptainer-root.sh: unknown option '$arg'" >&2; exit 2 ;;
    *) user=$arg ;;
  esac
done

log() { printf 'setup: %s\n' "$*" >&2; }

cache="${APPTHEUS_CACHE_DIR:-/var/cache/apptheus}"
mirror="${APPTHEUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$cache/apptainer-root"
stamp="$root/.apptheus-root"
partial="$cache/apptainer-root.partial"
build_log="$cache/apptainer-root.log"

# Unmounts whatever is still mounted below $1 (an interrupted debootstrap
# leaves proc and sys mounted in its target), deepest first.
unmount_below() {
  findmnt -rn -o TARGET | awk -v d="$1" 'index($0, d "/") == 1 || $0 == d' \
    | sort -r | while read -r m; do umount -l "$m" || true; done
}

# Deletes a root, never crossing into a mounted file system.
remove_root() {
  [ -e "$1" ] || return 0
  unmount_below "$1"
  rm -rf --one-file-system "$1"
}

stamp_value() { sed -n "s/^$1=//p" "$stamp" 2>/dev/null | head -n 1; }

cached() {
  [ -f "$stamp" ] && [ "$(stamp_value recipe)" = "$RECIPE" ] \
    && [ -x "$root/usr/bin/apptainer" ] \
    && [ -x "$root/usr/lib/x86_64-linux-gnu/apptainer/bin/starter" ]
}

build() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "debootstrap is missing: run scripts/setup.sh --test (or apt-get install debootstrap)"
    exit 1
  fi
  mkdir -p "$cache"
  local avail_mb
  avail_mb=$(df -Pm "$cache" | awk 'NR == 2 { print $4 }')
  if [ "$avail_mb" -lt "$NEED_MB" ]; then
    log "not enough free disk space for the Apptainer root: ${avail_mb} MiB free in $cache, $NEED_MB needed;"
    log "free some space there, or point APPTHEUS_CACHE_DIR at a larger file system"
    exit 1
  fi
  remove_root "$partial"
  log "building the Apptainer root (debootstrap of Debian $SUITE with $INCLUDE, about a minute; log: $build_log)"
  local t0=$SECONDS
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$partial" "$mirror" >"$build_log" 2>&1; then
    unmount_below "$partial"
    tail -n 20 "$build_log" >&2
    log "debootstrap of Debian $SUITE failed (log: $build_log). The unstable suite changes daily:"
    log "retry later, try another mirror (APPTHEUS_DEBIAN_MIRROR), or check the network to $mirror"
    exit 1
  fi
  unmount_below "$partial"

  # No systemd or D-Bus runs here: Apptainer's own cgroups (--memory and
  # friends) then go to /apptainer/<pid> in every hierarchy.
  sed -i 's/^systemd cgroups = yes/systemd cgroups = no/' "$partial/etc/apptainer/apptainer.conf"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$partial/etc/hosts"
  # The tests' own work directory is mounted here (the root itself is
  # mounted read-only for them).
  mkdir -p "$partial/work"
  rm -rf "$partial/var/cache/apt/archives/"*.deb

  local version
  version=$(chroot "$partial" dpkg-query -W -f='${Version}' apptainer)
  {
    echo "recipe=$RECIPE"
    echo "suite=$SUITE"
    echo "apptainer=$version"
    echo "mirror=$mirror"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$partial/.apptheus-root"
  remove_root "$root"
  mv "$partial" "$root"
  log "Apptainer root built in $((SECONDS - t0)) s"
}

# Puts USER's passwd and group entries (as the host has them) into the root
# and gives them a home there.
sync_user() {
  local entry uid gid group_entry group
  if ! entry=$(getent passwd "$user"); then
    log "user $user does not exist on this host: scripts/setup.sh --test creates it"
    exit 1
  fi
  uid=$(cut -d: -f3 <<<"$entry")
  gid=$(cut -d: -f4 <<<"$entry")
  group_entry=$(getent group "$gid") || { log "group $gid of $user does not exist"; exit 1; }
  group=$(cut -d: -f1 <<<"$group_entry")
  local other
  other=$(awk -F: -v u="$user" -v id="$uid" '$3 == id && $1 != u { print $1 }' "$root/etc/passwd")
  if [ -n "$other" ]; then
    log "uid $uid of $user is $other's in $root/etc/passwd; pick another uid for $user"
    exit 1
  fi
  local want_passwd="$user:x:$uid:$gid:apptheus tests:/home/$user:/bin/sh"
  local want_group="$group:x:$gid:"
  if ! grep -qxF "$want_passwd" "$root/etc/passwd" || ! grep -qxF "$want_group" "$root/etc/group"; then
    awk -F: -v n="$user" '$1 != n' "$root/etc/passwd" >"$root/etc/passwd.new"
    awk -F: -v n="$group" '$1 != n' "$root/etc/group" >"$root/etc/group.new"
    echo "$want_passwd" >>"$root/etc/passwd.new"
    echo "$want_group" >>"$root/etc/group.new"
    mv "$root/etc/passwd.new" "$root/etc/passwd"
    mv "$root/etc/group.new" "$root/etc/group"
    log "user $user ($uid:$gid) added to $root"
  fi
  mkdir -p "$root/home/$user"
  chown "$uid:$gid" "$root/home/$user"
  chmod 0755 "$root/home/$user"
}

# One build at a time (several checkouts may run setup at once).
mkdir -p "$cache"
exec 9>"$cache/apptainer-root.lock"
flock 9

if [ "$rebuild" = 1 ] || ! cached; then
  if [ -e "$root" ] && [ "$rebuild" = 0 ]; then
    log "$root is incomplete or of an older recipe: building it again"
  fi
  build
fi
sync_user
log "Apptainer $(stamp_value apptainer) (Debian $(stamp_value suite), built $(stamp_value built)) in $root"
