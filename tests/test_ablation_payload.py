from privacysf.config import AugmentConfig, ExperimentConfig
from privacysf.workflows.ablate import SWITCHES, variants
from privacysf.workflows.inprocess import query_payload


def test_each_ablation_row_differs_from_its_reference_in_one_switch():
    default = {"shift", "noise", "flip"}  # three, so no "default -name" row equals a "+name" row
    rows = variants(AugmentConfig(**dict.fromkeys(default, 0.5)))
    assert set(rows) == {"none", *(f"+{s}" for s in SWITCHES), "default", *(f"default -{s}" for s in default)}
    for name, cfg in rows.items():
        on = {s for s in SWITCHES if getattr(cfg, s) > 0}
        if name.startswith("+"):
            assert on == {name[1:]}
        elif name.startswith("default -"):
            assert on == default - {name.removeprefix("default -")}
    assert not any(getattr(rows["none"], s) for s in SWITCHES)


def test_payload_counts_real_message_bytes():
    cfg = ExperimentConfig().override(
        ["codec.downsample=8", "codec.image_channels=8", "codec.mask_channels=4", "codec.wire_dtype=int8"]
    )
    small = query_payload(cfg, 3, 64)
    large = query_payload(cfg, 3, 128)
    # 8x8 tokens x 8 values up, 8x8 x 4 down, one byte each, plus a header of under 200 bytes each way
    assert 64 * 8 < small["up"] < 64 * 8 + 200 and 64 * 4 < small["down"] < 64 * 4 + 200
    assert abs(large["up"] - small["up"] - (256 - 64) * 8) <= 4  # only the header digits differ
    assert small["total"] == small["up"] + small["down"]
