"""Plumbing every side uses: run folders, torch helpers, the training loop, resources and figures."""
