"""ExaBGP's side of the conversation, as text.

Owns: ExaBGP's JSON and adj-rib text → core events (parse), and the exabgp.conf rendered from
vtibgp.yaml (render). Must not know: the kernel, the RIB's decisions, metrics.
"""
