#!/usr/bin/env bash
# Installs the amd64 .deb into a throw-away root and checks what a gateway would get:
# the files and the conffile, `vitalgate --version` from the installed binary, the example
# config accepted by the installed binary, sysusers and tmpfiles applied to the root (user,
# groups, directories, owners, modes), `systemd-analyze verify` and the security score of the
# installed unit, and every man page rendering.
# Usage: packaging/test-deb.sh [DEB]   (default: target/debian/vitalgate_*_amd64.deb)
set -euo pipefail
cd "$(dirname "$0")/.."
deb="${1:-$(ls -t target/debian/vitalgate_*_amd64.deb 2>/dev/null | head -1)}"
[ -f "$deb" ] || { echo "test-deb: no amd64 package; run packaging/build-deb.sh x86_64-unknown-linux-gnu" >&2; exit 1; }
root=$(mktemp -d /tmp/vitalgate-deb-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

# The base system the unit runs on: systemd's own units (sysinit.target...) and kill(1) for
# ExecReload, as on any Debian 12 (merged /usr).
mkdir -p "$root/usr/lib/systemd/system" "$root/usr/bin" "$root/etc"
cp -a /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
cp /usr/bin/kill "$root/usr/bin/kill"
ln -s usr/bin "$root/bin"

dpkg -x "$deb" "$root"
for f in usr/bin/vitalgate usr/lib/systemd/system/vitalgate.service \
         usr/lib/sysusers.d/vitalgate.conf usr/lib/tmpfiles.d/vitalgate.conf \
         usr/lib/udev/rules.d/60-vitalgate-serial.rules etc/vitalgate/vitalgate.example.toml \
         usr/share/doc/vitalgate/examples/99-vitalgate-serial.rules \
         usr/share/man/man1/vitalgate.1.gz usr/share/man/man1/vitalgate-run.1.gz; do
  [ -e "$root/$f" ] || fail "$f is not in the package"
done
[ ! -e "$root/etc/vitalgate/vitalgate.toml" ] || fail "the package must not ship a live config"
dpkg-deb -f "$deb" Package | grep -qx vitalgate || fail "package name"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/vitalgate/vitalgate.example.toml \
  || fail "the example config is not a conffile"

version=$(dpkg-deb -f "$deb" Version)
out=$("$root/usr/bin/vitalgate" --version)
echo "installed binary: $out"
[ "$out" = "vitalgate ${version%-*}" ] || fail "--version says '$out', package is $version"
"$root/usr/bin/vitalgate" check-config --config "$root/etc/vitalgate/vitalgate.example.toml" >/dev/null \
  || fail "the shipped example config is refused by the shipped binary"

systemd-sysusers --root="$root" >/dev/null 2>&1 || fail "systemd-sysusers on the installed sysusers.d file"
uid=$(awk -F: '$1=="vitalgate"{print $3}' "$root/etc/passwd")
[ -n "$uid" ] || fail "no vitalgate user after sysusers"
for g in dialout bluetooth; do
  grep -Eq "^$g:[^:]*:[0-9]+:(.*,)?vitalgate(,|$)" "$root/etc/group" || fail "vitalgate is not in group $g"
done
if [ "$(id -u)" = 0 ]; then
  systemd-tmpfiles --root="$root" --create >/dev/null || fail "systemd-tmpfiles --create"
  [ "$(stat -c '%a %u' "$root/var/lib/vitalgate")" = "700 $uid" ] || fail "/var/lib/vitalgate owner/mode"
  [ "$(stat -c %a "$root/etc/vitalgate")" = 750 ] || fail "/etc/vitalgate mode"
else
  echo "test-deb: not root: tmpfiles owners not checked"
fi

out=$(systemd-analyze verify --root="$root" --man=no vitalgate.service 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
echo "systemd-analyze verify: clean"
systemd/check-security.sh "$root/usr/lib/systemd/system/vitalgate.service" 2.0 | tail -1

if command -v man >/dev/null; then
  for p in "$root"/usr/share/man/man1/*.1.gz; do
    MANWIDTH=80 man -l "$p" >/dev/null 2>&1 || fail "man page $(basename "$p") does not render"
  done
  echo "man pages: $(ls "$root"/usr/share/man/man1/*.1.gz | wc -l) render"
else
  for p in "$root"/usr/share/man/man1/*.1.gz; do zcat "$p" | grep -q '^\.TH' || fail "$(basename "$p") is not a man page"; done
fi
# The glibc the binary needs is no newer than the package's libc6 dependency (linked against
# Debian 12's glibc 2.36, it needs symbol versions up to GLIBC_2.34; packed relocations would
# need GLIBC_ABI_DT_RELR, 2.36). Every package of this version built here.
glibc_needed() {  # the newest glibc version an ELF file's version needs name
  readelf -V -W "$1" | awk '/Name: GLIBC_/ {print $0}' | grep -o 'GLIBC_[A-Z_0-9.]*' \
    | sed -e 's/^GLIBC_ABI_DT_RELR$/GLIBC_2.36/' -e 's/^GLIBC_//' | grep -E '^[0-9.]+$' | sort -V | tail -1
}
for pkg in target/debian/vitalgate_"$version"_*.deb; do
  [ -f "$pkg" ] || continue
  x=$(mktemp -d /tmp/vitalgate-deb-glibc.XXXXXX)
  dpkg-deb --fsys-tarfile "$pkg" | tar -x -C "$x" ./usr/bin/vitalgate
  needed=$(glibc_needed "$x/usr/bin/vitalgate")
  rm -rf "$x"
  declared=$(dpkg-deb -f "$pkg" Depends | sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p')
  [ -n "$needed" ] && [ -n "$declared" ] || fail "$(basename "$pkg"): glibc needed '$needed', declared '$declared'"
  [ "$(printf '%s\n%s\n' "$needed" "$declared" | sort -V | tail -1)" = "$declared" ] \
    || fail "$(basename "$pkg"): the binary needs glibc $needed but the package depends on libc6 (>= $declared)"
  echo "glibc: $(basename "$pkg") needs $needed, depends on libc6 (>= $declared)"
done
echo "test-deb: OK ($deb)"
