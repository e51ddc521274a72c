"""eksinfer: plan, simulate, route, benchmark and deploy vLLM inference on Amazon EKS."""

__version__ = "0.1.0"
