"""Privacy-SF: privacy-preserving segmentation where the server only ever sees codes.

The package is split along the trust boundary:

- ``privacysf.center``: what runs inside a hospital (codecs, encoders, keys, the client pipeline);
- ``privacysf.server``: what the server runs (mapping network, code augmentation, training on codes);
- ``privacysf.exchange``: the wire format, the only thing that crosses the boundary;
- ``privacysf.data``, ``privacysf.metrics``, ``privacysf.nets``: data access, evaluation and network
  building blocks used by the center and by the raw baselines.

This top-level module imports nothing heavy, so ``import privacysf.server`` stays free of any code that
reads images.
"""

__version__ = "0.1.0"
