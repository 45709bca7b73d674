"""qvplan: QuantaVirt live migration — host agents and declarative plan-and-apply."""

__version__ = "0.1.0"
