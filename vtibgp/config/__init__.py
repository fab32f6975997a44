"""vtibgp.config.schema.schema."""
