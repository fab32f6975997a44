"""vtibgp.yaml: its schema, defaults and validation (schema). Errors name the file, the key
and what is allowed. Must not know: ExaBGP, the kernel, the running daemon.
"""
