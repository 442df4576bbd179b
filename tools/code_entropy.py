"""How much lossless coding would shrink a fitted run's messages: one query per test slice.

Issue 17 asks for fewer bytes per query; entropy coding of the tokens is one way that keeps Dice
exactly. This measures it before any wire change: each test slice is sent as one query (image code
up, the server's mask code down) and each message's values are compressed as they travel (token by
token) and channel by channel, with zlib (level 9) and LZMA (preset 9e). Headers are counted as sent.

    PYTHONPATH=src .venv/bin/python tools/code_entropy.py runs/<fit-run> [--queries 40]
"""

from __future__ import annotations

import argparse
import lzma
import statistics
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from privacysf.data.prepare import prepare
from privacysf.exchange.wire import WIRE_DTYPES, decode_codes, encode_codes, read_header
from privacysf.workflows.fit import reload

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": lambda body: zlib.compress(body, 9),
    "lzma": lambda body: lzma.compress(body, preset=9 | lzma.PRESET_EXTREME),
}


def coded_sizes(message: bytes) -> dict[str, int]:
    """Bytes of ``message`` sent plain and with its values compressed in each layout (a message that
    arrived deflated is measured from its inflated values)."""
    header = read_header(message)
    batch = decode_codes(message)
    values = WIRE_DTYPES[header.dtype]
    by_channel = np.ascontiguousarray(batch.tokens.transpose(0, 2, 1))
    layouts = {"tokens": values.to_bytes(batch.tokens), "channels": values.to_bytes(by_channel)}
    sizes = {"sent plain": len(encode_codes(batch, header.dtype))}
    for name, compress in COMPRESSORS.items():
        for layout, data in layouts.items():
            sizes[f"{name} {layout}"] = header.body_offset + len(compress(data))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a privacysf fit run folder with its models")
    parser.add_argument("--queries", type=int, default=40, help="test slices sent, one per query")
    args = parser.parse_args()
    cfg, center, server = reload(args.run)
    images = prepare(cfg.data).test.images[: args.queries]
    ups = [center.image_message(image[None]) for image in images]
    messages = {"image code up": ups, "mask code down": [server.map(up) for up in ups]}
    columns = list(coded_sizes(ups[0]))
    print(f"{len(images)} queries, median bytes per message (fraction of the bytes sent)")
    print("| message | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, sent in messages.items():
        sizes = [coded_sizes(message) for message in sent]
        medians = dict(zip(columns, (statistics.median(s[c] for s in sizes) for c in columns), strict=True))
        sent_bytes = medians["sent plain"]
        cells = [
            f"{m:.0f}" if c == "sent plain" else f"{m:.0f} ({m / sent_bytes:.2f})" for c, m in medians.items()
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
