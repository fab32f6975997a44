"""vtibgp.lab.parts.parts."""
