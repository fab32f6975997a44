# Sourced by .ci/run and lab.sh: install what vtibgp needs on a Debian/Ubuntu machine, as root.
#   apt_install PKG...   install the packages that are missing (apt-get update only if needed);
#                        packaged services (bird, prometheus) are never started
#   make_venv            .venv with vtibgp, its test tools and ExaBGP 5.0 (editable install)
#   make_venv42          .venv42 with ExaBGP 4.2.21 (for the version matrix of the tests)

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

apt_install() {
    local missing=() pkg made_policy=""
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -qx 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "already installed: $*"
        return 0
    fi
    echo "installing: ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null >/dev/null
    if [[ -n "$made_policy" ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
}

make_venv() {
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip </dev/null
    .venv/bin/python -m pip install -q -e '.[test,exabgp]' </dev/null
}

make_venv42() {
    # (capture, not `| grep -q`: an early-closed pipe makes exabgp fail and pipefail notices)
    local have42
    have42=$(.venv42/bin/exabgp --version 2>/dev/null || true)
    if [[ "$have42" != *"ExaBGP : 4.2.21"* ]]; then
        python3 -m venv .venv42
        .venv42/bin/python -m pip install -q 'exabgp==4.2.21' </dev/null
    fi
}

# libreswan's config parser without libreswan installed: Debian's libreswan conflicts with
# strongSwan (charon, which the IPsec lab runs), so its package is unpacked, not installed, and
# only `addconn --checkconfig` is used from it (the tests check generated ipsec.conf files).
LIBRESWAN_DIR=/opt/vtibgp/libreswan
libreswan_checker() {
    if [[ -x /usr/libexec/ipsec/addconn || -x "$LIBRESWAN_DIR/usr/libexec/ipsec/addconn" ]]; then
        echo "libreswan addconn: there"
        return 0
    fi
    apt_install libunbound8 libevent-2.1-7
    local tmp
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # (apt downloads as its own user)
    (cd "$tmp" && apt-get download -qq libreswan </dev/null >/dev/null)
    mkdir -p "$LIBRESWAN_DIR"
    dpkg-deb -x "$tmp"/libreswan_*.deb "$LIBRESWAN_DIR"
    rm -rf "$tmp"
    "$LIBRESWAN_DIR/usr/libexec/ipsec/addconn" --help >/dev/null 2>&1 || true
    echo "libreswan addconn: unpacked in $LIBRESWAN_DIR"
}
