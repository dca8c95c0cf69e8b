"""Fault-injection conformance: every backend keeps its registrations and its watchers converge under faults."""
