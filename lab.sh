#!/usr/bin/env bash
# The main job on a machine with no AWS tunnel: install what is missing, then bring the lab up
# (gateway + simulated AWS VGW in network namespaces, BIRD 2, real ExaBGP + vtibgp) and leave it
# running. Run as root:
#   sudo bash lab.sh                         install what is missing, then `vtibgp lab up`
#   sudo bash lab.sh status|fail 1|restore 1|down   the other lab commands (`vtibgp lab ...`)
#   sudo bash lab.sh demo                    build, show failover and return, remove: one run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ $EUID -ne 0 ]]; then
    echo "lab.sh: run as root (network namespaces): sudo bash lab.sh" >&2
    exit 2
fi
source .ci/setup.sh
if (($# == 0)); then
    set -- up
fi
# building a lab installs what is missing; the other commands only need what is there
if [[ "$1" == up || "$1" == demo || ! -x .venv/bin/vtibgp ]]; then
    apt_install bird2 iproute2 nftables strongswan-charon strongswan-swanctl libcharon-extra-plugins
    make_venv
fi
exec "$PWD/.venv/bin/vtibgp" lab "$@"
