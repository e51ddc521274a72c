"""`eksinfer doctor`: can this cluster take this rendered tree? Reads the cluster (`cluster.py`, through the
official Kubernetes client and the kubeconfig, `aws eks get-token` exec plugin included), works out what the
tree needs, and reports each gap with what is missing, why it matters and the command that fixes it
(`checks.py`)."""

from eksinfer.deploy.doctor.checks import Finding, diagnose
from eksinfer.deploy.doctor.cluster import ClusterFacts, read_cluster

__all__ = ["ClusterFacts", "Finding", "diagnose", "read_cluster"]
