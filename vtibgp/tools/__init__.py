"""The commands a user runs: the `vtibgp` command line (cli), `aws-import` (aws_import) and
`doctor` (doctor). They call into the other packages; nothing there imports these.
"""
