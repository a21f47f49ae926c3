#!/usr/bin/env bash
# Builds the .deb (scripts/package.sh), installs it on this machine with apt as on a clean Debian
# 12, checks what it installed and set up (files, user, directories and their modes, library,
# pkg-config, the installed daemon running as its user), then purges it. It changes the system:
# root only; CI runs it (.ci/run). Where systemd is not PID 1 the unit is not started (it says so).
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() { echo "package check: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root: it installs the package"
version=$(sed -n 's/^project(kvtier VERSION \([0-9.]*\) .*/\1/p' CMakeLists.txt)
deb=$(scripts/package.sh | tail -1)
[ -f "$deb" ] || fail "scripts/package.sh made no package"
[ "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)" = "kvtier $version" ] ||
  fail "$deb is $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version), not kvtier $version"
contents=$(dpkg-deb -c "$deb" | awk '{ print $NF }')
for f in ./usr/bin/kvtierd ./usr/bin/kvtierctl ./usr/include/kvclient/client.h \
         ./usr/include/kvclient/c_api.h ./etc/kvtier/kvtierd.toml \
         ./usr/lib/systemd/system/kvtierd.service ./usr/lib/sysusers.d/kvtierd.conf \
         ./usr/lib/tmpfiles.d/kvtierd.conf; do
  grep -qx "$f" <<<"$contents" || fail "$deb lacks $f"
done
for f in "libkvclient.so.$version" libkvclient.a kvclient.pc kvclientConfig.cmake; do
  grep -q "/$f\$" <<<"$contents" || fail "$deb lacks $f"
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/kvtier/kvtierd.toml || fail "the config is no conffile"

# A machine where an earlier run stopped half-way: start from no kvtier.
if dpkg -s kvtier >/dev/null 2>&1; then apt-get purge -y -qq kvtier >/dev/null; fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >/dev/null
trap 'apt-get purge -y -qq kvtier >/dev/null 2>&1 || true' EXIT
[ "$(kvtierd --version)" = "kvtierd $version (protocol version 1)" ] || fail "kvtierd --version: $(kvtierd --version)"
[ "$(kvtierctl --version)" = "kvtierctl $version" ] || fail "kvtierctl --version: $(kvtierctl --version)"
getent passwd kvtier >/dev/null || fail "postinst made no kvtier user"
[ "$(stat -c '%a %U %G' /etc/kvtier)" = "750 root kvtier" ] ||
  fail "/etc/kvtier is $(stat -c '%a %U %G' /etc/kvtier), not 750 root kvtier"
[ "$(stat -c '%a %U %G' /etc/kvtier/kvtierd.toml)" = "640 root kvtier" ] ||
  fail "the config is $(stat -c '%a %U %G' /etc/kvtier/kvtierd.toml), not 640 root kvtier"
kvtierd --check-config /etc/kvtier/kvtierd.toml >/dev/null || fail "the shipped config does not load"
[ "$(pkg-config --modversion kvclient)" = "$version" ] || fail "pkg-config kvclient is not $version"
ldconfig -p | grep -q "libkvclient.so.1 " || fail "ldconfig does not know libkvclient.so.1"

# The installed daemon, as its own user, on a trial config (the shipped one wants /run/kvtier).
trial=$(mktemp -d /tmp/kvtier-package-XXXXXX)
chown kvtier:kvtier "$trial"
cat > "$trial/kvtierd.toml" <<TOML
config_version = 1
[daemon]
run_dir = "$trial/run"
default_tenant = "trial"
[admin]
audit_log = "$trial/run/audit.log"
[[tenant]]
name = "trial"
dram_bytes = "64MiB"
TOML
chown kvtier:kvtier "$trial/kvtierd.toml"
setpriv --reuid=kvtier --regid=kvtier --init-groups kvtierd --config "$trial/kvtierd.toml" \
  2>"$trial/log" &
pid=$!
for _ in $(seq 1 300); do [ -S "$trial/run/kvtierd-admin.sock" ] && break; sleep 0.1; done
status=$(kvtierctl --admin-socket "$trial/run/kvtierd-admin.sock" --json status) ||
  fail "the installed kvtierd does not answer: $(cat "$trial/log")"
grep -q "\"version\": \"$version\"" <<<"$status" || fail "status: $status"
kill "$pid"
wait "$pid" || fail "the installed kvtierd did not stop cleanly: $(cat "$trial/log")"
rm -rf "$trial"

if [ -d /run/systemd/system ]; then
  systemctl start kvtierd.service || fail "systemctl start kvtierd: $(journalctl -u kvtierd -n 20)"
  systemctl is-active --quiet kvtierd.service || fail "kvtierd is not active under systemd"
  kvtierctl status >/dev/null || fail "kvtierctl status under systemd"
  systemctl stop kvtierd.service
  echo "package check: kvtierd started and stopped under systemd"
else
  echo "package check: systemd is not PID 1 here ($(ps -p 1 -o comm=)): the unit is installed" \
       "but was not started; the daemon ran from the package as its own user instead"
fi
apt-get purge -y -qq kvtier >/dev/null
trap - EXIT
[ ! -e /usr/bin/kvtierd ] || fail "purge left /usr/bin/kvtierd"
echo "package check: kvtier $version installed, checked and purged"
