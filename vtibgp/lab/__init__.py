"""A gateway and a cloud in network namespaces: the pieces (parts: namespaces with
tunnel-named veths, BIRD as the VGW, ExaBGP on the exabgp.conf stanzas of
vtibgp.exabgp.render, detached daemons) and `vtibgp lab` (cli). The integration tests and
benchmarks build their topologies from the same parts; what only the tests need (an API
recorder, AS-path and route-set helpers) is in tests/integration/lab_support.py.
"""
