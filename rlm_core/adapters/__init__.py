"""Adapters: the ports of rlm_core.ports over real clients and embedded stores."""
