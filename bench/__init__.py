"""Benchmarks: each measures edgeloop and a bare baseline on the same work in the same run."""
