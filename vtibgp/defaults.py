"""One home for the facts several layers share: the values vtibgp uses when the config does not
say otherwise. Constants only, importing nothing (the lean updown hook loads this module).

The config schema's defaults, the kernel writer's, the control client's, the lab's and the
commands' all come from here; the kernel's own constants (RT_TABLE_MAIN…) stay in the codec.
"""

PROTOCOL = 186  # route protocol of every route we install ("bgp" in rt_protos)
TABLE = 254  # the main table
BATCH = 2000  # route requests per netlink send
METRICS_HOST = "127.0.0.1"
METRICS_PORT = 10179
METRICS_LISTEN = f"{METRICS_HOST}:{METRICS_PORT}"
CONTROL_SOCKET = "/run/vtibgp/vtibgp.sock"
AWS_ASN = 64512  # the VGW's default Amazon-side ASN
# how `vtibgp lab fail` can fail a tunnel; ipsec and ike only in `lab up --ipsec strongswan`
LAB_SIGNALS = ("link", "bgp", "both", "blackhole", "ipsec", "ike")
