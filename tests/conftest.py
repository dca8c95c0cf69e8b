"""Test configuration: the real-server harness plugin (``--servers``) and shared settings."""

pytest_plugins = ["tests.harness.pytest_plugin"]
