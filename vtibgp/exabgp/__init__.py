"""vtibgp.exabgp."""
