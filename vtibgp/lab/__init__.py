"""A gateway and a cloud in network namespaces: the pieces (parts: namespaces with
tunnel-named veths, BIRD as the VGW, ExaBGP, a recorder, detached daemons) and `vtibgp lab`
(cli). The integration tests and benchmarks build their topologies from the same parts.
"""
