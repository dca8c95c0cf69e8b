"""Anchor clients run in their own venvs or languages (tooz, Curator); see benchmarks/setup_anchors.sh."""
