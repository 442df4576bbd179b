"""Workflows that drive a center and the server together: fit, federate, ablate, segment, baselines.

They sit above ``privacysf.center`` and ``privacysf.server`` (which never import them); the CLI is a
thin layer over these functions.
"""
