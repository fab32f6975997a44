"""vtibgp.kernel.writer.writer."""
