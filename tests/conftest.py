"""Loaded by pytest before any test module: dlrm_dist first, so that its start-up choice of
OpenMP's spin count (dlrm_dist.threads, read by libgomp when torch loads) holds for the
suite's own process as for every entry point."""

import dlrm_dist  # noqa: F401
