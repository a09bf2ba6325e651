"""twistd plugin ``accessgrid-transfer``: names gsitransfer.tap, imports nothing else."""

from twisted.application.service import ServiceMaker

accessgrid_transfer = ServiceMaker(
    "gsitransfer",
    "gsitransfer.tap",
    "AccessGrid-compatible file transfer server (HTTP and GSI-style mutual TLS)",
    "accessgrid-transfer",
)
