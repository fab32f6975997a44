#!/usr/bin/env bash
# The main job on a machine with no AWS tunnel: install what is missing, then run the lab
# (gateway + simulated AWS VGW in network namespaces, BIRD 2, real ExaBGP + vtibgp), show
# failover and return, and remove everything again. Run as root:  sudo bash lab.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ $EUID -ne 0 ]]; then
    echo "lab.sh: run as root (network namespaces): sudo bash lab.sh" >&2
    exit 2
fi
source .ci/setup.sh
apt_install bird2 iproute2
make_venv
exec .venv/bin/vtibgp lab demo "$@"
