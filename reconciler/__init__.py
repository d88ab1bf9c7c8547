"""p4kube reconciler: Git intent + cluster state -> audited, transactional P4Runtime switch tables."""

__version__ = "0.1.0"
