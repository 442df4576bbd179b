"""The server's mapper kinds: what each takes and returns, what it can see, what it costs, its checkpoint."""

import json
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from privacysf.benchmark.service_process import codes
from privacysf.config import AugmentConfig, ExperimentConfig, MapperConfig, TrainConfig
from privacysf.errors import ConfigError
from privacysf.nets.grid import GridUNetMapper
from privacysf.nets.mappers import build_mapper, build_task_head
from privacysf.nets.transformer import PooledTokenTransformer
from privacysf.server.mapping import MappingServer
from privacysf.server.serving import ModelCache
from privacysf.server.tables import ModelRow

SMALL_UNET = MapperConfig(kind="unet", grid_channels=(8, 16), res_units=1)
TRANSFORMER = MapperConfig(kind="transformer", width=16, heads=2, latents=0, token_width=0)
"""A small transformer with every token attending to every other (``latents`` 0; pooled by default),
whose tokens, when pooled, are as wide as its slots (``token_width`` 0)."""


def initialised_server(cfg: MapperConfig) -> MappingServer:
    """A mapping server for ``cfg`` with a fresh mapper of 4 channels in and out on a 4×4 grid."""
    made = MappingServer(cfg, AugmentConfig(), TrainConfig(device="cpu"))
    made.initialise((4, 4), 4, 4)
    return made


def stored_model(folder, number: int, mapper: MapperConfig, recorded: dict | None = None) -> ModelRow:
    """A fresh 8×8-token mapper saved in ``folder`` and the service's row for it, whose settings are
    ``recorded`` (default: the mapper's own)."""
    server = MappingServer(mapper, AugmentConfig(), TrainConfig(device="cpu"))
    server.initialise((8, 8), 4, 4)
    server.save(folder / f"model{number}.pt")
    settings = mapper.model_dump() if recorded is None else recorded
    return ModelRow(
        id=number, file=f"model{number}.pt", grid=[8, 8], in_channels=4, out_channels=4, mapper=settings
    )


def model_store(folder, runtime: str = "torch", cache: int = 1) -> SimpleNamespace:
    """The parts of a service's store that :class:`ModelCache` reads: model files and two settings."""
    return SimpleNamespace(
        files=SimpleNamespace(model=lambda name: folder / name),
        cfg=SimpleNamespace(model_cache=cache, mapper_runtime=runtime),
    )


def without_group_norm(model: nn.Module) -> nn.Module:
    """GroupNorm pools statistics over every token, so any token nudges every output through it;
    without it, what an output depends on is what its convolutions reach."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, nn.Identity())
    return model.eval()


@pytest.mark.parametrize("grid", [(16, 16), (5, 12), (2, 3)])
def test_the_unet_mapper_maps_token_sequences_to_bounded_codes_on_any_grid(grid):
    torch.manual_seed(0)
    model = build_mapper(SMALL_UNET, grid, 3, 5).eval()
    tokens = 50 * torch.randn(2, grid[0] * grid[1], 3)
    codes = model(tokens)
    assert codes.shape == (2, grid[0] * grid[1], 5)
    assert codes.abs().max() <= 1 and codes.std() > 0
    # the second code of a batch is mapped as if it came alone (no statistics across the batch)
    torch.testing.assert_close(model(tokens[1:]), codes[1:])


def test_the_unet_mapper_sees_the_whole_grid_where_the_cnn_sees_a_few_rows():
    """A change to the first token (top-left corner) reaches the output at the bottom-right corner."""
    torch.manual_seed(0)
    grid = (32, 32)
    tokens = torch.rand(1, 1024, 4)
    moved = tokens.clone()
    moved[0, 0] += 1
    reach = {}
    for kind in ("unet", "cnn"):
        model = without_group_norm(
            build_mapper(MapperConfig(kind=kind, width=16, grid_channels=(8, 16)), grid, 4, 4)
        )
        with torch.no_grad():
            reach[kind] = (model(moved) - model(tokens))[0, -1].abs().max().item()
    assert reach["unet"] > 0
    assert reach["cnn"] == 0  # its dilations reach 2 x 63 tokens either way: four rows of 32


def flops(model: nn.Module, tokens: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, tokens, 4))
    return counter.get_total_flops()


def test_the_unet_mappers_arithmetic_grows_linearly_with_the_tokens():
    """Sixteen times the tokens (grid 16 -> 64) cost at most 10 % more per token (the coarse levels
    added cost a quarter of the one above, and so on); the cnn's depth grows with log2 of the grid
    side, so its cost per token grows by the blocks added (5 -> 7 per dilation cycle)."""
    per_grid = {
        kind: [flops(build_mapper(MapperConfig(kind=kind), (s, s), 4, 4), s * s) for s in (16, 64)]
        for kind in ("unet", "cnn")
    }
    unet, cnn = per_grid["unet"], per_grid["cnn"]
    assert unet[1] <= 16 * 1.1 * unet[0]
    assert cnn[1] >= 16 * 1.3 * cnn[0]
    assert cnn[1] > 5 * unet[1]  # at 256² images with the default codec


@pytest.mark.parametrize(("latents", "token_width"), [(0, 0), (8, 0), (8, 8)])
def test_the_transformer_mappers_are_blind_to_a_fixed_token_permutation(latents, token_width):
    """Permuting tokens and position embeddings together permutes the output: the key costs nothing,
    with full or pooled attention, and with tokens narrower than the slots."""
    torch.manual_seed(0)
    model = build_mapper(TRANSFORMER.updated(latents=latents, token_width=token_width), (4, 4), 4, 3).eval()
    assert isinstance(model, PooledTokenTransformer) == bool(latents)
    x = torch.randn(2, 16, 4)
    perm = torch.randperm(16)
    with torch.no_grad():
        reference = model(x)
        model.position.copy_(model.position[:, perm])
        permuted = model(x[:, perm])
    torch.testing.assert_close(permuted, reference[:, perm], atol=1e-5, rtol=1e-4)


def attention_sizes(model: nn.Module, tokens: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Query length × key length of every attention one training-mode forward pass computes."""
    sizes: list[int] = []
    attend = F.scaled_dot_product_attention

    def counted(query: torch.Tensor, key: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        sizes.append(query.shape[-2] * key.shape[-2])
        return attend(query, key, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    model.train()(torch.randn(2, tokens, 4))
    return sizes


def test_the_pooled_transformer_attends_linearly_in_the_tokens_and_still_sees_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full attention scores every pair of the 1,024 tokens; pooled attention scores only token-slot
    pairs (and slot pairs), yet a change to the first token reaches the last one's output."""
    grid, tokens = (32, 32), 1024
    full = attention_sizes(build_mapper(TRANSFORMER, grid, 4, 4), tokens, monkeypatch)
    assert max(full) == tokens * tokens
    pooled_model = build_mapper(TRANSFORMER.updated(latents=8), grid, 4, 4)
    pooled = attention_sizes(pooled_model, tokens, monkeypatch)
    assert len(pooled) == 3 * TRANSFORMER.depth  # read, mix, write per block
    assert max(pooled) == tokens * 8
    torch.manual_seed(0)
    x = torch.rand(1, tokens, 4)
    moved = x.clone()
    moved[0, 0] += 1
    with torch.no_grad():
        reach = (pooled_model.eval()(moved) - pooled_model(x))[0, -1].abs().max().item()
    assert reach > 1e-4


def test_a_narrower_token_stream_carries_the_tokens_at_its_width_for_a_fraction_of_the_arithmetic():
    """Tokens at half the slots' width: the slots keep theirs, and a pass over 1,024 tokens costs at
    most half the operations of tokens as wide as the slots (fails if ``token_width`` is dropped on the
    way to the network)."""
    wide_cfg = TRANSFORMER.updated(latents=8)
    wide, narrow = (
        build_mapper(c, (32, 32), 4, 4).eval() for c in (wide_cfg, wide_cfg.updated(token_width=8))
    )
    assert narrow.position.shape == (1, 1024, 8) and narrow.latents.shape == (1, 8, 16)
    assert narrow.blocks[0].mlp[1].in_features == 8 and wide.blocks[0].mlp[1].in_features == 16

    def operations(model: nn.Module) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 1024, 4))
        return counter.get_total_flops()

    assert operations(narrow) <= 0.5 * operations(wide)


def test_the_token_width_never_widens_a_narrow_mapper_nor_refuses_a_kind_it_does_not_shape():
    """The default token width (64) is capped at the slots' width, and checked against the heads only
    where it shapes a network, a pooled transformer: fails if the check runs for every kind, or only on
    explicit values (as pydantic's field validators do unless told to check defaults)."""
    assert MapperConfig(kind="transformer", width=32).token_channels == 32
    assert build_mapper(MapperConfig(kind="transformer", width=32), (4, 4), 4, 4).position.shape[-1] == 32
    for unshaped in ({"kind": "unet"}, {"kind": "transformer", "latents": 0}):
        MapperConfig.from_dict({**unshaped, "width": 96, "heads": 3})
    with pytest.raises(ConfigError, match=r"token_width .* 64 channels, which mapper.heads \(3\)"):
        MapperConfig.from_dict({"kind": "transformer", "width": 96, "heads": 3})
    assert MapperConfig.from_dict({"kind": "transformer", "width": 96, "heads": 3, "token_width": 48})


def test_a_pooled_transformer_checkpoint_is_never_loaded_as_full_attention(tmp_path):
    """A full-attention checkpoint records no slots (None, as a checkpoint made before the option
    reads), nor does any other kind's, whatever ``latents`` says; a pooled one records its number.
    Checkpoints without the key (made before it) still load into full attention and the unet."""

    full, pooled, unet = (
        initialised_server(TRANSFORMER),
        initialised_server(TRANSFORMER.updated(latents=8)),
        initialised_server(SMALL_UNET),
    )
    assert SMALL_UNET.latents > 0 and unet.signature["latents"] is None
    assert full.signature["latents"] is None
    pooled.save(tmp_path / "pooled.pt")
    with pytest.raises(ConfigError, match="latents"):
        full.load(tmp_path / "pooled.pt", (4, 4), 4, 4)
    for older in (unet, full):  # as saved before the option: no latents in the signature
        older.save(tmp_path / "older.pt")
        checkpoint = torch.load(tmp_path / "older.pt")
        del checkpoint["signature"]["latents"]
        torch.save(checkpoint, tmp_path / "older.pt")
        initialised_server(older.mapper_cfg).load(tmp_path / "older.pt", (4, 4), 4, 4)
    with pytest.raises(ConfigError, match="latents"):
        pooled.load(tmp_path / "older.pt", (4, 4), 4, 4)  # the older full-attention checkpoint


def test_a_narrow_token_checkpoint_is_never_loaded_with_tokens_as_wide_as_the_slots(tmp_path):
    """A pooled checkpoint records its token width only when it differs from the slots' (a pooled
    checkpoint made before the option has no key and loads as tokens as wide as the slots); full
    attention and other kinds never record it."""

    pooled = TRANSFORMER.updated(latents=8, token_width=0)  # tokens as wide as the slots (16)
    narrow, wide, spelled_out = (initialised_server(pooled.updated(token_width=w)) for w in (8, 0, 16))
    assert narrow.signature["token_width"] == 8
    assert wide.signature["token_width"] is None and spelled_out.signature == wide.signature
    for other in (TRANSFORMER, SMALL_UNET):
        assert initialised_server(other.updated(token_width=8)).signature["token_width"] is None
    narrow.save(tmp_path / "narrow.pt")
    with pytest.raises(ConfigError, match="token_width"):
        wide.load(tmp_path / "narrow.pt", (4, 4), 4, 4)
    wide.save(tmp_path / "older.pt")
    checkpoint = torch.load(tmp_path / "older.pt")
    del checkpoint["signature"]["token_width"]  # as a pooled checkpoint saved before the option
    torch.save(checkpoint, tmp_path / "older.pt")
    initialised_server(pooled).load(tmp_path / "older.pt", (4, 4), 4, 4)
    with pytest.raises(ConfigError, match="token_width"):
        narrow.load(tmp_path / "older.pt", (4, 4), 4, 4)


@pytest.mark.parametrize("head", ["mapper", "narrow"])
def test_the_task_head_is_the_mappers_kind_and_never_the_order_blind_transformer(head):
    grid = (8, 8)
    assert isinstance(build_task_head(SMALL_UNET, head, grid, 4, 4), GridUNetMapper)
    built = build_task_head(TRANSFORMER, head, grid, 4, 4)
    default = build_mapper(MapperConfig(width=16), grid, 4, 4)
    assert type(built) is type(default)  # the center's head sees raster order; no permutation to learn


def test_a_task_head_policy_is_refused_where_a_head_network_is_built():
    with pytest.raises(ValueError, match="task_head_for"):
        build_task_head(SMALL_UNET, "auto", (8, 8), 4, 4)  # type: ignore[arg-type]


def test_lighter_task_heads_keep_the_token_shapes_at_a_fraction_of_the_weights():
    grid, tokens = (8, 8), torch.randn(2, 64, 4)
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    full = build_task_head(MapperConfig(), "mapper", grid, 4, 3)
    for kind, share in (("narrow", 1 / 8), ("linear", 1e-3)):
        head = build_task_head(MapperConfig(), kind, grid, 4, 3)
        assert head(tokens).shape == (2, 64, 3)
        assert size(head) < share * size(full)
    poly = MapperConfig(kind="poly")
    assert (
        size(build_task_head(poly, "narrow", grid, 4, 3))
        < size(build_task_head(poly, "mapper", grid, 4, 3)) / 3
    )
    linear = build_task_head(MapperConfig(), "linear", grid, 4, 3)
    swapped = tokens.flip(1)  # a per-token map: moving tokens moves its answers, nothing mixes
    assert torch.allclose(linear(swapped), linear(tokens).flip(1))


def test_a_unet_checkpoint_records_its_levels_and_a_cnn_checkpoint_keeps_its_old_signature(tmp_path):
    def server(cfg: MapperConfig) -> MappingServer:
        return MappingServer(cfg, AugmentConfig(), TrainConfig(device="cpu"))

    unet = server(SMALL_UNET)
    unet.initialise((8, 8), 4, 4)
    unet.save(tmp_path / "unet.pt")
    server(SMALL_UNET).load(tmp_path / "unet.pt", (8, 8), 4, 4)
    with pytest.raises(ConfigError, match=r"grid_channels: checkpoint \(8, 16\) vs run \(8, 32\)"):
        server(SMALL_UNET.updated(grid_channels=(8, 32))).load(tmp_path / "unet.pt", (8, 8), 4, 4)
    cnn = server(MapperConfig(kind="cnn", width=16))
    cnn.initialise((8, 8), 4, 4)
    # made before the unet existed, a cnn checkpoint names none of its fields
    assert "grid_channels" not in cnn.signature and "res_units" not in cnn.signature


def _channels_last(server: MappingServer) -> bool:
    assert server.model is not None
    convs = [m for m in server.model.modules() if isinstance(m, nn.Conv2d)]
    weights = [m.weight for m in convs if m.kernel_size != (1, 1)]  # 1×1 weights are both layouts at once
    return bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_a_trained_or_loaded_mapper_serves_with_channels_last_weights_and_the_same_answers(tmp_path):
    """Fails if ``MappingServer.fit`` or ``load`` stops putting the weights in channels-last layout
    (the faster one for oneDNN's convolutions), or if the layout changed what the mapper answers."""
    train = TrainConfig(device="cpu", epochs=1, min_steps=1, progress=False)
    trained = MappingServer(SMALL_UNET, AugmentConfig(), train)
    torch.manual_seed(0)
    trained.fit(*(codes(4, kind, grid=(8, 8), seed=i) for i, kind in enumerate(["image", "mask"] * 2)))
    assert _channels_last(trained)
    tokens = torch.rand(3, 64, 4) * 2 - 1
    expected = trained.predict_tokens(tokens)
    trained.save(tmp_path / "unet.pt")
    served = MappingServer(SMALL_UNET, AugmentConfig(), TrainConfig(device="cpu"))
    served.load(tmp_path / "unet.pt", (8, 8), 4, 4)
    assert _channels_last(served)
    torch.testing.assert_close(served.predict_tokens(tokens), expected)


def test_a_relu_mapper_is_recorded_so_it_never_serves_as_a_gelu_one(tmp_path):
    """Fails if the checkpoint stops recording ``mapper.activation``: the weights of either would
    load into the other and answer wrongly without an error."""
    relu, gelu_cfg = SMALL_UNET, SMALL_UNET.updated(activation="gelu")
    assert not any(isinstance(m, nn.GELU) for m in build_mapper(relu, (8, 8), 4, 4).modules())
    server = MappingServer(relu, AugmentConfig(), TrainConfig(device="cpu"))
    server.initialise((8, 8), 4, 4)
    server.save(tmp_path / "relu.pt")
    MappingServer(relu, AugmentConfig(), TrainConfig(device="cpu")).load(tmp_path / "relu.pt", (8, 8), 4, 4)
    gelu = MappingServer(gelu_cfg, AugmentConfig(), TrainConfig(device="cpu"))
    with pytest.raises(ConfigError, match=r"activation: checkpoint 'relu' vs run None"):
        gelu.load(tmp_path / "relu.pt", (8, 8), 4, 4)
    gelu.initialise((8, 8), 4, 4)
    assert gelu.signature["activation"] is None  # checkpoints made before the option lack it: they load


def test_a_mapper_served_by_onnx_runtime_answers_as_torch_does_at_any_batch_size(tmp_path):
    """Fails if ``prepare_for_serving`` stops exporting to ONNX Runtime under ``mapper.runtime``, if
    the export fixes the batch size, or if its answers drift from torch's."""
    onnx = SMALL_UNET.updated(runtime="onnxruntime")
    train = TrainConfig(device="cpu", epochs=1, min_steps=1, progress=False)
    trained = MappingServer(onnx, AugmentConfig(), train)
    torch.manual_seed(0)
    trained.fit(*(codes(4, kind, grid=(8, 8), seed=i) for i, kind in enumerate(["image", "mask"] * 2)))
    assert trained.served is not None
    trained.save(tmp_path / "unet.pt")
    by_torch = MappingServer(SMALL_UNET, AugmentConfig(), TrainConfig(device="cpu"))
    by_torch.load(tmp_path / "unet.pt", (8, 8), 4, 4)  # the runtime is not part of the checkpoint
    assert by_torch.served is None
    for count in (1, 70):  # one query, and more than one of predict_tokens' batches of 64
        tokens = torch.rand(count, 64, 4) * 2 - 1
        torch.testing.assert_close(trained.predict_tokens(tokens), by_torch.predict_tokens(tokens))
    # a new model in the same server (a second fit validates through predict_tokens) must not be
    # answered by the previous model's export: fails if ``initialise`` stops dropping it
    trained.initialise((8, 8), 4, 4)
    assert trained.served is None
    with pytest.raises(ValueError, match="onnxruntime serves the unet and cnn mappers"):
        MapperConfig(kind="transformer", width=16, heads=2, runtime="onnxruntime")


def test_runs_and_service_models_saved_before_the_activation_setting_load_as_gelu(tmp_path):
    """Fails without :data:`FORMER_MAPPER_DEFAULTS`: a run or a stored service model from before
    ``mapper.activation`` would be rebuilt with today's ReLU and its GELU checkpoint refused."""
    assert MapperConfig().activation == "relu"  # the migration is needed at all
    saved = ExperimentConfig().to_dict()
    del saved["mapper"]["activation"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ExperimentConfig.load_run(tmp_path / "config.json").mapper.activation == "gelu"
    assert ExperimentConfig.load_run(tmp_path / "config.json").mapper.kind == ExperimentConfig().mapper.kind
    saved["mapper"]["activation"] = "relu"  # a run that names it keeps it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ExperimentConfig.load_run(tmp_path / "config.json").mapper.activation == "relu"
    gelu = SMALL_UNET.updated(activation="gelu")
    recorded = gelu.model_dump()
    del recorded["activation"]  # as the service recorded a model before the option existed
    row = stored_model(tmp_path, 1, gelu, recorded)
    served = ModelCache(model_store(tmp_path)).get(row)
    assert any(isinstance(m, nn.GELU) for m in served.model.modules())


def test_transformers_saved_before_pooled_attention_load_with_full_attention(tmp_path):
    """Fails without ``latents`` in :data:`FORMER_MAPPER_DEFAULTS`: a keyed run or a stored service
    model from before the option would be rebuilt pooled and its full-attention checkpoint refused."""
    assert MapperConfig().latents > 0  # the migration is needed at all
    saved = ExperimentConfig().override(["mapper.kind=transformer"]).to_dict()
    del saved["mapper"]["latents"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ExperimentConfig.load_run(tmp_path / "config.json").mapper.latents == 0
    recorded = TRANSFORMER.model_dump()
    del recorded["latents"]  # as the service recorded a model before the option existed
    served = ModelCache(model_store(tmp_path)).get(stored_model(tmp_path, 1, TRANSFORMER, recorded))
    assert not any(isinstance(m, PooledTokenTransformer) for m in served.model.modules())


def test_pooled_transformers_saved_before_the_token_width_load_with_tokens_as_wide_as_the_slots(tmp_path):
    """Fails without ``token_width`` in :data:`FORMER_MAPPER_DEFAULTS`: a keyed run or a stored
    service model of the pooled transformer from before the option would be rebuilt with narrower
    tokens and its checkpoint refused."""
    assert MapperConfig().token_width not in (0, MapperConfig().width)  # the migration is needed at all
    saved = ExperimentConfig().override(["mapper.kind=transformer"]).to_dict()
    del saved["mapper"]["token_width"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ExperimentConfig.load_run(tmp_path / "config.json").mapper.token_width == 0
    pooled = TRANSFORMER.updated(latents=8, token_width=0)
    recorded = pooled.model_dump()
    del recorded["token_width"]  # as the service recorded a model before the option existed
    served = ModelCache(model_store(tmp_path)).get(stored_model(tmp_path, 1, pooled, recorded))
    assert served.model.position.shape[-1] == pooled.width


def test_the_service_answers_in_onnx_runtime_where_told_and_able(tmp_path):
    """With ``ServiceConfig.mapper_runtime=onnxruntime`` the model cache serves a unet model from its
    export, with torch's answers, and a transformer (which ONNX Runtime is not asked to serve) in torch.
    Fails if the cache ignores the setting or passes it to a mapper that cannot take it."""
    rows = [stored_model(tmp_path, 1, SMALL_UNET), stored_model(tmp_path, 2, TRANSFORMER)]
    cache = ModelCache(model_store(tmp_path, "onnxruntime", cache=2))
    unet, transformer = (cache.get(row) for row in rows)
    assert unet.served is not None and transformer.served is None
    assert transformer.mapper_cfg.runtime == "torch"
    by_torch = ModelCache(model_store(tmp_path)).get(rows[0])
    assert by_torch.served is None
    tokens = torch.rand(3, 64, 4) * 2 - 1
    torch.testing.assert_close(unet.predict_tokens(tokens), by_torch.predict_tokens(tokens))


@pytest.mark.parametrize("mode", [0o640, 0o440])
def test_a_served_model_keeps_its_export_and_reuses_it_only_for_the_same_weights(tmp_path, monkeypatch, mode):
    """The first load exports the model and keeps ``model1.onnx``, with the checkpoint's permission
    bits; the next load (a restarted service, a model the cache dropped) reads it, exports nothing,
    and answers as torch does. Weights changed by 1e-6 under the same file name answer within the
    probe's tolerance, so only the fingerprint can tell: fails if the export is not kept, if a kept
    one is ignored, if it outlives its weights, or if its mode is not its checkpoint's (a read-only
    one included: the export is written before it takes that mode)."""
    from privacysf.nets import onnx_runtime

    row = stored_model(tmp_path, 1, SMALL_UNET)
    (tmp_path / "model1.pt").chmod(mode)
    first = ModelCache(model_store(tmp_path, "onnxruntime")).get(row)
    assert first.served is not None and not first.served.reused
    assert (tmp_path / "model1.onnx").stat().st_mode & 0o777 == mode
    export = onnx_runtime._export
    monkeypatch.setattr(onnx_runtime, "_export", lambda *a: pytest.fail("exported again"))
    again = ModelCache(model_store(tmp_path, "onnxruntime")).get(row)
    assert again.served is not None and again.served.reused
    tokens = torch.rand(3, 64, 4) * 2 - 1
    by_torch = ModelCache(model_store(tmp_path)).get(row)
    torch.testing.assert_close(again.predict_tokens(tokens), by_torch.predict_tokens(tokens))
    assert by_torch.model is not None
    with torch.no_grad():
        next(by_torch.model.parameters()).add_(1e-6)  # a refit saved under the same name, say
    by_torch.save(tmp_path / "model1.pt")
    nudged = ModelCache(model_store(tmp_path)).get(row)
    assert torch.allclose(again.predict_tokens(tokens), nudged.predict_tokens(tokens), rtol=1e-3, atol=1e-4)
    monkeypatch.setattr(onnx_runtime, "_export", export)
    refit = ModelCache(model_store(tmp_path, "onnxruntime")).get(row)
    assert refit.served is not None and not refit.served.reused
    assert ModelCache(model_store(tmp_path, "onnxruntime")).get(row).served.reused  # kept anew


def _unusable_export(case: str, folder, row: ModelRow, monkeypatch) -> str:
    """Spoil the export kept for ``row`` (``folder/model1.onnx``) as ``case`` says; the log line expected."""
    import onnx

    from privacysf.nets.onnx_runtime import FINGERPRINT, fingerprint

    kept = folder / "model1.onnx"
    if case == "not ONNX":
        kept.write_bytes(b"half a file")
        return "cannot be used"
    if case == "external weights":  # values in another file, which ONNX Runtime would go and read
        onnx.save_model(
            onnx.load(str(kept)), str(kept), save_as_external_data=True, location="w.bin", size_threshold=0
        )
        return "points to weights in other files"
    if case == "another torch":
        monkeypatch.setattr(torch, "__version__", "2.99.0")
        return "other weights or versions"
    model = ModelCache(model_store(folder)).get(row).model
    assert model is not None
    if case == "another network":  # as if the network's code changed: same weights, other graph
        ModelCache(model_store(folder, "onnxruntime")).get(stored_model(folder, 2, SMALL_UNET))
        spoilt = onnx.load(str(folder / "model2.onnx"))
        reason = "answers unlike its network"
    else:  # "fixed batch": an export that cannot take one query at a time
        example = torch.zeros(2, 64, 4)
        with warnings.catch_warnings():  # torch's own exporter code warns of its deprecated pytree use
            warnings.simplefilter("ignore", FutureWarning)
            spoilt = torch.onnx.export(model.eval(), (example,), dynamo=True, verbose=False).model_proto
        spoilt.metadata_props.add(key=FINGERPRINT, value=fingerprint(model, example))
        reason = "batch size is fixed"
    label = onnx.load(str(kept)).metadata_props
    theirs = next(p for p in spoilt.metadata_props if p.key == FINGERPRINT)
    theirs.value = next(p.value for p in label if p.key == FINGERPRINT)
    onnx.save(spoilt, str(kept))
    return reason


@pytest.mark.parametrize(
    "case", ["not ONNX", "external weights", "another torch", "another network", "fixed batch"]
)
def test_a_kept_export_that_cannot_be_used_is_made_again(tmp_path, monkeypatch, caplog, case):
    """A truncated file, one whose weights lie in another file, an export made under another torch,
    another network's graph carrying this one's fingerprint (what changed network code looks like)
    and an export with a fixed batch size are each exported again, answer as torch does, and are
    replaced by a file the next load reuses. Fails if a kept export is reused without its external
    data, fingerprint, probe or batch check, or if a bad file breaks the load."""
    row = stored_model(tmp_path, 1, SMALL_UNET)
    ModelCache(model_store(tmp_path, "onnxruntime")).get(row)
    with caplog.at_level("INFO", logger="privacysf.nets.onnx_runtime"):
        reason = _unusable_export(case, tmp_path, row, monkeypatch)
        served = ModelCache(model_store(tmp_path, "onnxruntime")).get(row)
    assert served.served is not None and not served.served.reused
    assert reason in caplog.text
    tokens = torch.rand(3, 64, 4) * 2 - 1
    torch.testing.assert_close(
        served.predict_tokens(tokens), ModelCache(model_store(tmp_path)).get(row).predict_tokens(tokens)
    )
    assert ModelCache(model_store(tmp_path, "onnxruntime")).get(row).served.reused


def test_a_model_whose_export_cannot_be_kept_is_still_served(tmp_path, caplog):
    """Where the export cannot be written (here a folder holds its name), the log says so and ONNX
    Runtime answers from memory. Fails if a failed write stops the model from loading."""
    row = stored_model(tmp_path, 1, SMALL_UNET)
    (tmp_path / "model1.onnx").mkdir()
    with caplog.at_level("WARNING", logger="privacysf.nets.onnx_runtime"):
        served = ModelCache(model_store(tmp_path, "onnxruntime")).get(row)
    assert served.served is not None and "could not keep the ONNX export" in caplog.text
    tokens = torch.rand(2, 64, 4) * 2 - 1
    torch.testing.assert_close(
        served.predict_tokens(tokens), ModelCache(model_store(tmp_path)).get(row).predict_tokens(tokens)
    )


def test_concurrent_first_requests_for_a_model_load_it_once(tmp_path, monkeypatch):
    """Four requests arrive together for a model not yet loaded: one loads (and, with ONNX Runtime,
    exports) it while the others wait for that copy. Fails if the cache loads once per request."""
    row = stored_model(tmp_path, 1, SMALL_UNET)
    loads, load = [], MappingServer.load

    def slow_load(self, *args) -> None:
        loads.append(1)
        time.sleep(0.3)  # long enough for every request to arrive while the first one loads
        load(self, *args)

    monkeypatch.setattr(MappingServer, "load", slow_load)
    cache = ModelCache(model_store(tmp_path))
    with ThreadPoolExecutor(4) as pool:
        served = list(pool.map(lambda _: cache.get(row), range(4)))
    assert len(loads) == 1 and all(s is served[0] for s in served)
    assert cache.get(row) is served[0] and not cache.loading
