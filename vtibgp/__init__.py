"""vtibgp: an ExaBGP process plugin that installs BGP routes through route-based IPsec tunnel
devices (VTI / XFRM), with backups ready in the kernel and Prometheus metrics."""

__version__ = "0.1.0"
