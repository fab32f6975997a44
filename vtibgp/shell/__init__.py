"""The imperative shell: the event loop (daemon), the relay ExaBGP runs (supervisor) and every
Prometheus metric (metrics).

Owns: threads, the clock, stdin/stdout, signals, logs. Must not decide what a route is: it
feeds the core events and carries out what the core returns.
"""
