#!/usr/bin/env bash
# Fetches cAdvisor 0.38.7, Debian 11's `cadvisor` package, into the cache
# ($APPTHEUS_CACHE_DIR/cadvisor, default /var/cache/apptheus/cadvisor), for
# `cargo xtask bench`, which runs it beside the agent as the peer to
# compare with. A Go binary: extracted with dpkg-deb, it runs on Debian 12.
# apt gets a private sources list and state for bullseye; the system's apt
# configuration is neither used nor touched. Idempotent; prints the path.
set -euo pipefail

cache="${APPTHEUS_CACHE_DIR:-/var/cache/apptheus}"
dir="$cache/cadvisor"
bin="$dir/root/usr/bin/cadvisor"
log() { printf 'cadvisor.sh: %s\n' "$*" >&2; }

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { log "$keyring is missing: apt-get install debian-archive-keyring"; exit 1; }

apt="$dir/apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d" \
  "$apt/preferences.d" "$dir/debs"
{
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian bullseye main"
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian-security bullseye-security main"
} >"$apt/sources.list"
opts=(
  "-oDir::Etc::SourceList=$apt/sources.list" "-oDir::Etc::SourceParts=$apt/sources.list.d"
  "-oDir::Etc::PreferencesParts=$apt/preferences.d" "-oDir::State::Lists=$apt/lists"
  "-oDir::Cache=$apt/cache" "-oAPT::Sandbox::User=root"
)
log "fetching Debian 11's cadvisor package"
apt-get "${opts[@]}" -qq update
(cd "$dir/debs" && apt-get "${opts[@]}" -qq download cadvisor)
deb=$(ls -t "$dir"/debs/cadvisor_*.deb | head -1)
# Unpacked under another name first: an interrupted run leaves no binary.
rm -rf "$dir/root.partial"
dpkg-deb -x "$deb" "$dir/root.partial"
rm -rf "$dir/root"
mv "$dir/root.partial" "$dir/root"
"$bin" --version >&2
echo "$bin"
