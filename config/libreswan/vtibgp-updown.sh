#!/bin/sh
# leftupdown= for route-based tunnels with vtibgp (libreswan).
#
# pluto runs this with /bin/sh -c and describes the event in the environment (PLUTO_VERB,
# PLUTO_CONNECTION, VTI_IFACE, PLUTO_PEER, ...). First the stock updown does its usual work
# (creating the VTI device, its address and sysctls, ...); then, for the verbs that say a
# tunnel now carries traffic or has stopped, `vtibgp updown` tells the running vtibgp, which
# moves the routes off a tunnel that went down (libreswan leaves the VTI device up, so nothing
# else would tell it) and brings them back after its hold-down when the tunnel returns.
#
# The exit status is always the stock script's: vtibgp being stopped or slow must never make
# pluto believe the tunnel set-up failed. `vtibgp updown` gives up after 5 s.
#
# pluto waits for this script, so the route change waits for vtibgp's start-up: the lean hook
# that `vtibgp install-hook` writes (default path below) starts in ~25 ms, `vtibgp` itself in
# 60-110 ms. The hook is used when it is there.
#
# Overridable from the environment (e.g. in the leftupdown= line itself):
#   VTIBGP_STOCK_UPDOWN  the stock script             (default: ipsec _updown)
#   VTIBGP               the vtibgp command to run    (default: the lean hook if installed,
#                        else /usr/local/bin/vtibgp)
#   VTIBGP_SOCKET        vtibgp's control socket      (default: /run/vtibgp/vtibgp.sock)
#   VTIBGP_MTU           the VTI device's MTU, set on up-client (default: 1436, what AWS's
#                        sample configuration uses; AWS allows at most 1446 and does no path MTU
#                        discovery; libreswan itself leaves the kernel's default, 1480 on a
#                        1500-byte uplink). Empty: leave the MTU alone.
#   VTIBGP_DEVICE        the tunnel device (default: $VTI_IFACE). XFRM interfaces
#                        (ipsec-interface=N, device ipsecN) have no VTI_IFACE: `aws-import
#                        --device xfrm` names the device in each conn's leftupdown=.
#   VTIBGP_ADDRESS       ADDRESS/LEN put on the device on up-client (XFRM interfaces:
#                        libreswan 4 sets no address on them; VTIs get leftvti= instead)

stock=${VTIBGP_STOCK_UPDOWN:-ipsec _updown}
hook=/usr/local/libexec/vtibgp/updown-hook
if [ -z "${VTIBGP:-}" ] && [ -x "$hook" ]; then
    vtibgp=$hook
else
    vtibgp=${VTIBGP:-/usr/local/bin/vtibgp}
fi
socket=${VTIBGP_SOCKET:-/run/vtibgp/vtibgp.sock}
mtu=${VTIBGP_MTU-1436}
dev=${VTIBGP_DEVICE:-${VTI_IFACE:-}}

# word splitting of $stock is wanted: it is a command with its arguments
# shellcheck disable=SC2086
$stock "$@"
status=$?

case "${PLUTO_VERB:-}" in
    up-client|up-host|up-client-v6|up-host-v6)
        if [ -n "$mtu" ] && [ -n "$dev" ] && ! ip link set dev "$dev" mtu "$mtu"; then
            echo "vtibgp-updown: cannot set MTU $mtu on $dev" >&2
        fi
        if [ -n "${VTIBGP_ADDRESS:-}" ] && [ -n "$dev" ] && \
                ! ip addr replace "$VTIBGP_ADDRESS" dev "$dev"; then
            echo "vtibgp-updown: cannot put $VTIBGP_ADDRESS on $dev" >&2
        fi
        ;;
esac

case "${PLUTO_VERB:-}" in
    up-client|down-client|up-host|down-host|up-client-v6|down-client-v6|up-host-v6|down-host-v6)
        # only these start Python: prepare-*, route-*, unroute-* say nothing about the tunnel
        # with VTIBGP_DEVICE set, --device names it (else vtibgp takes VTI_IFACE or its
        # tunnels: map of the connection name)
        if ! "$vtibgp" updown --socket "$socket" --strict \
                ${VTIBGP_DEVICE:+--device "$VTIBGP_DEVICE"}; then
            echo "vtibgp-updown: vtibgp was not told: $PLUTO_VERB ${PLUTO_CONNECTION:-?}" \
                 "(${dev:-no device}); its routes follow the BGP session only" >&2
        fi
        ;;
esac
exit "$status"
