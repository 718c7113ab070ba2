"""hookrelay: receive Qualifio webhooks, store them durably, map them, deliver them."""

__version__ = "0.1.0"
