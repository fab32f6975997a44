"""The control socket: its server (server), its client (client) and the IPsec updown hook
(updown) built on the client.

Must stay light: the updown hook imports this package at every tunnel event, so nothing here
imports the config schema, the core or a third-party module.
"""
