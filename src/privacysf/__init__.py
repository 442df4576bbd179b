"""Privacy-SF: privacy-preserving segmentation where the server only ever sees codes.

The package is layered along the trust boundary (``lint-imports`` checks that no import runs up):

- ``privacysf.cli``: the thin command line over the workflows;
- ``privacysf.workflows``, ``privacysf.attacks``, ``privacysf.benchmark``, ``privacysf.reference``:
  what drives both sides at once (in-process pipeline, fit, federate, ablate, segment; the attacker;
  the speed bench; the published successor's re-implementation);
- ``privacysf.center``: what runs inside a hospital (codecs, encoders, keys, the service client);
- ``privacysf.server``: what the server runs (mapping network, code augmentation, store, service);
  it never imports ``privacysf.center`` or any module that reads images;
- ``privacysf.exchange``: the wire format and Flower messages, the only things that cross;
- ``privacysf.data``, ``privacysf.nets``, ``privacysf.metrics``, ``privacysf.common``,
  ``privacysf.config``: data access, networks, metrics, plumbing and the typed configuration.

This top-level module imports nothing heavy, so ``import privacysf.server`` stays free of any code that
reads images.
"""

__version__ = "0.1.0"
