"""A re-implementation of the published *Improved Privacy-SF* design, from the paper's description only.

It is the benchmark's reference configuration, not part of the method: center-side autoencoders with
multi-scale latents (8×8×256, 16×16×128 and 32×32×64 at 256², i.e. 1/32, 1/16 and 1/8 of the side),
one server mapper per scale built around pyramid pooling, and MSE between latents. Its latents travel
as float32, which is what makes the published design send about 0.88 MB per 256² query. ``center``
and ``server`` keep the same trust boundary as the method's own packages.
"""
