# Benchmarks of issue 7 (docs/performance.md). Run as root: they build network namespaces and
# start BIRD, FRR and ExaBGP in them. Each script cleans up after itself, also on Ctrl-C.
#
#   make bench          every benchmark at the issue's sizes (about 20 min on 2 cores)
#   make bench-quick    small sizes, a few minutes
#   make -k bench       go on with the next benchmark when one fails
#
# One benchmark at a time: they measure time, and two at once would measure each other.

PYTHON ?= .venv/bin/python
B := benchmarks

.NOTPARALLEL:
.PHONY: bench bench-quick \
	bench-kernel bench-pipeline bench-memory bench-failover bench-end-to-end bench-restart \
	bench-resync bench-quick-resync \
	bench-quick-kernel bench-quick-pipeline bench-quick-failover bench-quick-end-to-end \
	bench-quick-restart

bench: bench-kernel bench-pipeline bench-memory bench-failover bench-end-to-end bench-restart \
	bench-resync

# target 1: KernelWriter against ip -batch, 10k, 100k and 1M routes
bench-kernel:
	$(PYTHON) $(B)/kernel_writer.py --full
# target 2: ExaBGP JSON -> parse -> decide -> kernel, 100k prefixes over two peers
bench-pipeline:
	$(PYTHON) $(B)/pipeline.py --prefixes 100000
# targets 2 and 5: 1M prefixes over two peers (2M paths): prefixes/s and bytes per path
bench-memory:
	$(PYTHON) $(B)/pipeline.py --prefixes 1000000
# target 4: 10k prefixes, every tunnel-down signal
bench-failover:
	$(PYTHON) $(B)/failover.py
# target 3: 100k prefixes BIRD -> ExaBGP + vtibgp -> kernel, against ExaBGP alone, BIRD, FRR
bench-end-to-end:
	$(PYTHON) $(B)/end_to_end.py
# target 6: restart with 100k routes in the kernel: time to reconcile, route churn
bench-restart:
	$(PYTHON) $(B)/restart.py
# target 6, offline: the daemon's own cost per adj-rib-in answer line (no root)
bench-resync:
	$(PYTHON) $(B)/resync_intake.py

bench-quick: bench-quick-kernel bench-quick-pipeline bench-quick-failover \
	bench-quick-end-to-end bench-quick-restart bench-quick-resync

bench-quick-kernel:
	$(PYTHON) $(B)/kernel_writer.py --sizes 10000 --repeat 1
bench-quick-pipeline:
	$(PYTHON) $(B)/pipeline.py --prefixes 20000
bench-quick-failover:
	$(PYTHON) $(B)/failover.py --quick --no-profile
bench-quick-end-to-end:
	$(PYTHON) $(B)/end_to_end.py --quick
bench-quick-restart:
	$(PYTHON) $(B)/restart.py --quick
bench-quick-resync:
	$(PYTHON) $(B)/resync_intake.py --lines 20000 --repeat 1
