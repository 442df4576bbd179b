"""The server's half of encrypted queries: the poly mapper evaluated on CKKS ciphertexts.

The server holds a center's public evaluation keys (``privacysf.exchange.encrypted.EvaluationKeys``)
and the trained :class:`~privacysf.nets.polynomial.PolynomialMapper`. Its weights stay plaintext;
every query's code is a ciphertext it can rotate, add and multiply but never read, and the reply is a
ciphertext only the center can decrypt.

A convolution over packed codes (``per`` channels a ciphertext, channel-major, raster tokens, the
block repeated to fill the slots): for
each neighbour offset ``s`` and each shift ``k`` by whole channels within the block, the input
ciphertext rotated by ``k·L + s`` holds, in output channel ``o``'s slots, input channel ``o + k``'s
value at that neighbour. A plaintext of the weights (zero where the neighbour falls off the grid,
which is the zero padding) times each rotation, summed, is the convolution for a whole block of output
channels at once: ``per · kernel²`` rotations per input ciphertext and one plaintext product per
(output block, input block, rotation). Weights are encoded at the scale of the prime the next
rescaling removes, so every layer ends at the scale it started from.
"""

from __future__ import annotations

import time

import numpy as np
import tenseal.sealapi as seal
import torch

from privacysf.errors import ConfigError, PayloadTooLargeError, WireFormatError
from privacysf.exchange.encrypted import (
    CkksParameters,
    EncryptedCodes,
    EvaluationKeys,
    channels_per_ciphertext,
    load_bytes,
    rotation_steps,
    save_bytes,
    tile,
)
from privacysf.nets.polynomial import PolynomialMapper


class EncryptedConv:
    """One convolution's weights as plaintexts, ready to multiply ciphertexts at one level."""

    def __init__(
        self,
        conv: torch.nn.Conv2d,
        grid: tuple[int, int],
        per: int,
        slots: int,
        encoder: seal.CKKSEncoder,
        parms_id,
        weight_scale: float,
    ) -> None:
        weight = conv.weight.detach().double().cpu().numpy()
        bias = conv.bias.detach().double().cpu().numpy() if conv.bias is not None else None
        out_channels, in_channels, kernel, _ = weight.shape
        (h, w), tokens, half = grid, grid[0] * grid[1], kernel // 2
        self.per, self.tokens, self.slots = per, tokens, slots
        period = per * tokens
        self.out_blocks, self.in_blocks = -(-out_channels // per), -(-in_channels // per)
        rows, cols = np.divmod(np.arange(tokens), w)
        offsets = [(dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1)]
        self.steps: list[int] = []
        # plains[b][a] lists (rotation index, plaintext) pairs with any non-zero weight
        self.plains: list[list[list[tuple[int, seal.Plaintext]]]] = [
            [[] for _ in range(self.in_blocks)] for _ in range(self.out_blocks)
        ]
        for k in range(per):
            for dy, dx in offsets:
                valid = (rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w)
                index = len(self.steps)
                self.steps.append((k * tokens + dy * w + dx) % period)
                for b in range(self.out_blocks):
                    for a in range(self.in_blocks):
                        vector = np.zeros((per, tokens))
                        for o in range(per):
                            oc, ic = b * per + o, a * per + (o + k) % per
                            if oc < out_channels and ic < in_channels:
                                vector[o] = weight[oc, ic, dy + half, dx + half] * valid
                        if np.any(vector):
                            plain = seal.Plaintext()
                            encoder.encode(
                                tile(vector.reshape(-1), slots).tolist(), parms_id, weight_scale, plain
                            )
                            self.plains[b][a].append((index, plain))
        self.bias = None
        if bias is not None:
            self.bias = np.zeros((self.out_blocks * per, tokens))
            self.bias[:out_channels] = bias[:, None]

    def __call__(
        self, inputs: list[seal.Ciphertext], evaluator: seal.Evaluator, galois: seal.GaloisKeys, encoder
    ) -> list[seal.Ciphertext]:
        rotated = []
        for cipher in inputs:
            turns = []
            for step in self.steps:
                if step == 0:
                    turns.append(cipher)
                else:
                    turn = seal.Ciphertext()
                    evaluator.rotate_vector(cipher, step, galois, turn)
                    turns.append(turn)
            rotated.append(turns)
        outputs = []
        for b in range(self.out_blocks):
            total = None
            for a in range(self.in_blocks):
                for index, plain in self.plains[b][a]:
                    term = seal.Ciphertext()
                    evaluator.multiply_plain(rotated[a][index], plain, term)
                    if total is None:
                        total = term
                    else:
                        evaluator.add_inplace(total, term)
            if total is None:  # a block of output channels whose weights are all zero
                raise ConfigError("a mapper layer with all-zero weights cannot be evaluated on ciphertexts")
            evaluator.rescale_to_next_inplace(total)
            if self.bias is not None:
                plain = seal.Plaintext()
                block = tile(self.bias[b * self.per : (b + 1) * self.per].reshape(-1), self.slots)
                encoder.encode(block.tolist(), total.parms_id(), total.scale, plain)
                evaluator.add_plain_inplace(total, plain)
            outputs.append(total)
        return outputs


class EncryptedMapper:
    """A trained poly mapper bound to one center's evaluation keys: ciphertext codes in, out."""

    def __init__(self, model: PolynomialMapper, keys: EvaluationKeys) -> None:
        grid = model.grid
        tokens = grid[0] * grid[1]
        params = CkksParameters.for_tokens(tokens)
        if keys.params != params:
            raise WireFormatError(f"evaluation keys for {keys.params}, this mapper's codes need {params}")
        self.key_id, self.grid, self.params = keys.key_id, grid, params
        self.per = channels_per_ciphertext(params, tokens)
        kernel = model.first.kernel_size[0]
        needed = rotation_steps(grid, self.per, kernel)
        if missing := sorted(set(needed) - set(keys.steps)):
            raise WireFormatError(
                f"the evaluation keys lack rotations {missing[:5]}…, which this mapper needs"
            )
        context = params.context()
        self.context = context
        self.relin, self.galois = keys.load()
        self.encoder = seal.CKKSEncoder(context)
        self.evaluator = seal.Evaluator(context)
        first = context.first_context_data()
        after_first = first.next_context_data()
        square = after_first.next_context_data()
        self.first = EncryptedConv(
            model.first, grid, self.per, params.slots, self.encoder, first.parms_id(), _last_prime(first)
        )
        self.second = EncryptedConv(
            model.second, grid, self.per, params.slots, self.encoder, square.parms_id(), _last_prime(square)
        )
        self.in_channels = model.first.in_channels
        self.out_channels = model.second.out_channels

    def map(self, query: EncryptedCodes, deadline: float | None = None) -> EncryptedCodes:
        """Encrypted image codes -> encrypted mask codes under the same key; past ``deadline``
        (``time.monotonic()``, checked between codes) the rest is refused, saying how many fit."""
        if query.key_id != self.key_id:
            raise WireFormatError(
                f"codes encrypted under key {query.key_id}; this mapper holds {self.key_id}"
            )
        if query.grid != self.grid or query.channels != self.in_channels:
            raise WireFormatError(
                f"encrypted codes of {query.channels} channels on a {query.grid} grid reached a mapper of "
                f"{self.in_channels} channels on {self.grid}; encode with the matching codec"
            )
        if any(len(code) != -(-self.in_channels // self.per) for code in query.ciphertexts):
            raise WireFormatError("encrypted codes hold the wrong number of ciphertexts per code")
        replies: list[list[bytes]] = []
        for blobs in query.ciphertexts:
            if replies and deadline is not None and time.monotonic() > deadline:
                raise PayloadTooLargeError(
                    f"mapping {len(query.ciphertexts)} encrypted codes takes longer than this server "
                    f"allows per request; {len(replies)} fit: send fewer codes per request"
                )
            ciphers = [load_bytes(seal.Ciphertext, self.context, b, "an encrypted code") for b in blobs]
            if any(c.parms_id() != self.context.first_parms_id() for c in ciphers):
                raise WireFormatError("encrypted codes must arrive fresh, at the first level of the chain")
            hidden = self.first(ciphers, self.evaluator, self.galois, self.encoder)
            for cipher in hidden:
                self.evaluator.square_inplace(cipher)
                self.evaluator.relinearize_inplace(cipher, self.relin)
                self.evaluator.rescale_to_next_inplace(cipher)
            out = self.second(hidden, self.evaluator, self.galois, self.encoder)
            replies.append([save_bytes(cipher) for cipher in out])
        return EncryptedCodes(replies, "mask", self.key_id, self.grid, self.out_channels, query.scan)


def _last_prime(context_data) -> float:
    """The prime that rescaling ciphertexts at this level removes: the weights' encoding scale."""
    return float(context_data.parms().coeff_modulus()[-1].value())
