"""Attacks on Privacy-SF, run as an honest-but-curious server (or anyone on the network) would.

This package plays the adversary: it is handed what the server sees (codes as they arrive on the
wire), plus whatever a threat scenario grants (leaked image/code pairs, public data of the same
modality). It touches raw images only to train on what was leaked and to score reconstructions, so
it lives outside ``privacysf.server``, which never imports image-handling modules.
"""
