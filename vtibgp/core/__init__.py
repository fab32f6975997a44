"""vtibgp.core.engine.engine."""
