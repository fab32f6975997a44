"""vtibgp.tools."""
