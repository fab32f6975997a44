"""vtibgp.control.server.server."""
