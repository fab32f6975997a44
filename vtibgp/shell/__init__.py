"""vtibgp.shell."""
