"""Benchmarks: results land in bench/results/ (markdown/JSON + PNG)."""
