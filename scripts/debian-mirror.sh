# shellcheck shell=bash
# The Debian mirror this machine's apt already uses, for scripts that debootstrap a root file system
# (scripts/container-test, scripts/perf-analyzer-setup). Sourced, not run. No mirror host is named here:
# DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR when set, else the URIs of this machine's apt sources.
#
#   . "$REPO/scripts/debian-mirror.sh"
#   apt_mirror bookworm            # the first URI apt lists for that suite ("" when none)
#   debian_mirror                  # DEBIAN_MIRROR, else the URI of the host's own suite, else any Debian URI
#   debian_security_mirror         # DEBIAN_SECURITY_MIRROR, else the URI of the host's <codename>-security

apt_mirror() {  # $1 = suite (bookworm | bookworm-security | ...): the first URI apt lists for it
    local suite=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite || suite == "*") ok = 1 }
            /^Enabled:[[:space:]]*no/ { ok = 0; uri = "" }
            END { if (uri != "" && ok) print uri }' "$f" | head -n 1
    done | head -n 1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {
                if ($(i+1) == suite || (suite == "*" && $(i+1) !~ /-security$/)) print $i; break } }' "$f"
    done | head -n 1
}

host_codename() {
    # shellcheck disable=SC1091
    (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
}

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local codename uri=""
    codename=$(host_codename)
    [ -n "$codename" ] && uri=$(apt_mirror "$codename")
    # a mirror carries every suite: any main-archive URI will do for another release (e.g. trixie)
    [ -n "$uri" ] || uri=$(apt_mirror bookworm)
    [ -n "$uri" ] || uri=$(apt_mirror '*' | grep -v -- '-security' | head -n 1)
    echo "$uri"
}

debian_security_mirror() {
    if [ -n "${DEBIAN_SECURITY_MIRROR:-}" ]; then echo "$DEBIAN_SECURITY_MIRROR"; return; fi
    local codename
    codename=$(host_codename)
    apt_mirror "${codename:-bookworm}-security"
}
