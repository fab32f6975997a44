#!/bin/sh
# updown script for strongSwan CHILD_SAs that carry a route-based tunnel, with vtibgp.
#
#   children.<child>.updown = /usr/local/libexec/vtibgp/strongswan-updown.sh DEVICE [ADDRESS/LEN] [KEY]
#
# charon runs this through /bin/sh with the event in the environment (PLUTO_VERB,
# PLUTO_CONNECTION = the CHILD_SA name, PLUTO_ME / PLUTO_PEER = the outside addresses,
# PLUTO_MARK_IN / PLUTO_MARK_OUT, ...).
#
# up-client: make sure the VTI device exists and is set up the way a route-based tunnel needs
#   (created once with the SA's mark as its key, like the usual AWS recipe; its inside address,
#   disable_policy=1, loose rp_filter, forwarding, MTU), then tell vtibgp the tunnel is up
#   (its routes return after the hold-down).
# down-client: tell vtibgp the tunnel is down; it moves the routes to the other tunnel at once.
#   The device is left in place: BGP's TCP connection keeps its local address, and the next
#   up-client finds everything ready. (Deleting it works too: vtibgp treats a deleted device
#   as down, and one re-created under the same name as new.)
#
# The exit status is that of the device set-up; vtibgp being stopped or slow never fails the
# hook. `vtibgp updown` gives up after 5 s.
#
# With VTIBGP_DEVICE_KIND=xfrm (aws-import --ike strongswan --device xfrm writes it) the
# device is an XFRM interface, created with KEY as its if_id (the CHILD_SA's if_id_in/out);
# strongSwan, unlike libreswan, does not create it. Policy checks stay on there (disable_policy
# is for VTIs, whose decrypted packets have no policy of their own).
#
# From the environment: VTIBGP (default: the lean hook of `vtibgp install-hook` if installed,
# else /usr/local/bin/vtibgp), VTIBGP_SOCKET (default
# /run/vtibgp/vtibgp.sock), VTIBGP_MTU (default 1436, what AWS suggests for its tunnels).

dev=${1:?usage: strongswan-updown.sh DEVICE [ADDRESS/LEN] [KEY]}
addr=${2:-}
key=${3:-${PLUTO_MARK_OUT%%/*}}
hook=/usr/local/libexec/vtibgp/updown-hook  # `vtibgp install-hook`: starts ~3x faster
if [ -z "${VTIBGP:-}" ] && [ -x "$hook" ]; then
    vtibgp=$hook
else
    vtibgp=${VTIBGP:-/usr/local/bin/vtibgp}
fi
socket=${VTIBGP_SOCKET:-/run/vtibgp/vtibgp.sock}
mtu=${VTIBGP_MTU:-1436}
kind=${VTIBGP_DEVICE_KIND:-vti}

setup_device() {
    if ! ip link show dev "$dev" >/dev/null 2>&1; then
        if [ -z "$key" ]; then
            echo "strongswan-updown: no key for $dev (set mark_in/mark_out or pass KEY)" >&2
            return 1
        fi
        if [ "$kind" = xfrm ]; then
            ip link add "$dev" type xfrm if_id "$key" || return 1
        else
            ip link add "$dev" type vti local "$PLUTO_ME" remote "$PLUTO_PEER" key "$key" ||
                return 1
        fi
    fi
    # disable_policy (VTIs): decrypted packets arriving on the device need no policy check of
    # their own; rp_filter 2 (loose): replies may come back through the other tunnel. Never
    # set disable_xfrm on a VTI: it turns encryption off and the tunnel carries nothing.
    if [ "$kind" != xfrm ]; then
        sysctl -q -w "net.ipv4.conf.$dev.disable_policy=1" >/dev/null || return 1
    fi
    sysctl -q -w "net.ipv4.conf.$dev.rp_filter=2" "net.ipv4.conf.$dev.forwarding=1" \
        >/dev/null || return 1
    if [ -n "$addr" ] && ! ip -4 -o addr show dev "$dev" | grep -q " inet $addr "; then
        ip addr add "$addr" dev "$dev" || return 1
    fi
    ip link set dev "$dev" mtu "$mtu" up
}

status=0
case "${PLUTO_VERB:-}" in
    up-client|up-host)
        setup_device || status=$?
        ;;
esac

case "${PLUTO_VERB:-}" in
    up-client|down-client|up-host|down-host|up-client-v6|down-client-v6|up-host-v6|down-host-v6)
        if ! "$vtibgp" updown --device "$dev" --socket "$socket" --strict; then
            echo "strongswan-updown: vtibgp was not told: $PLUTO_VERB ${PLUTO_CONNECTION:-?}" \
                 "($dev); its routes follow the BGP session only" >&2
        fi
        ;;
esac
exit "$status"
