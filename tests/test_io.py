"""Packed / float safetensors checkpoints: exact round trips and every way a file can be bad."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fusenas import QuantConfig, load_packed, quantize_, save_packed
from fusenas.models import small_cnn_for
from fusenas.nn import QuantConv2d, QuantLinear
from fusenas.quant import io as qio
from fusenas.quant.io import load_checkpoint, load_float, load_model, save_float


@pytest.fixture(scope="module")
def float_model():
    torch.manual_seed(0)
    model = small_cnn_for("digits")
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def packed_model(float_model):
    model = copy.deepcopy(float_model)
    config = QuantConfig(
        bits=4,
        group_size=32,
        per_layer={"features.3": {"symmetric": False, "bits": 3}, "head.3": {"bits": "ternary"}},
    )
    quantize_(model, config)
    return model


@pytest.fixture
def packed_file(packed_model, tmp_path):
    return save_packed(packed_model, tmp_path / "m.safetensors", {"note": "test", "acc": 99.0})


def _x():
    return torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)


def test_round_trip_is_bit_exact(packed_model, packed_file):
    state = load_packed(packed_file)
    assert state.kind == "packed" and state.format_version == 1
    assert state.metadata == {"note": "test", "acc": 99.0}
    assert set(state.layers) == {"features.0", "features.3", "features.6", "head.1", "head.3"}
    assert state.layers["features.3"]["bits"] == 3 and not state.layers["features.3"]["symmetric"]
    assert state.layers["head.3"]["ternary"] and state.layers["head.1"]["type"] == "QuantLinear"
    assert state.layers["features.3"]["conv"]["stride"] == [2, 2]
    rebuilt = state.build_model()
    x = _x()
    assert torch.equal(rebuilt(x), packed_model(x))
    for name, t in packed_model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], t), name
    model2, state2 = load_model(packed_file)
    assert torch.equal(model2(x), packed_model(x)) and state2.kind == "packed"


def test_load_into_user_model(packed_model, packed_file):
    model = small_cnn_for("digits")
    load_packed(packed_file).load_into(model)
    assert isinstance(model.features[0], QuantConv2d) and isinstance(model.head[1], QuantLinear)
    x = _x()
    assert torch.equal(model(x), packed_model(x))
    with pytest.raises(ValueError, match="head.1"):
        load_packed(packed_file).load_into(small_cnn_for("digits", hidden=32))
    with pytest.raises(ValueError, match="model"):
        load_packed(packed_file).load_into(small_cnn_for("digits", channels=[16, 16]))
    with pytest.raises(TypeError, match="model"):
        load_packed(packed_file).load_into("model")


def test_bfloat16_bias_is_kept(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(32, 8).to(torch.bfloat16))
    quantize_(model, QuantConfig(bits=8, group_size=None))
    path = save_packed(model, tmp_path / "bf16.safetensors")
    state = load_packed(path)
    assert state.tensors["0.bias"].dtype == torch.bfloat16 and state.arch is None
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 8))
    state.load_into(fresh)
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match="architecture"):
        state.build_model()


def test_float_checkpoint_round_trip(float_model, tmp_path):
    path = save_float(float_model, tmp_path / "f.safetensors", {"dataset": "digits"})
    state = load_float(path)
    assert state.kind == "float" and state.layers == {}
    model = state.build_model()
    x = _x()
    assert torch.equal(model(x), float_model(x))
    with pytest.raises(ValueError, match="float checkpoint, expected a packed"):
        load_packed(path)
    with pytest.raises(ValueError, match="model"):
        save_packed(float_model, tmp_path / "x.safetensors")


def test_load_checkpoint_reads_either_kind(float_model, packed_model, packed_file, tmp_path):
    float_file = save_float(float_model, tmp_path / "f.safetensors")
    assert load_checkpoint(float_file).kind == "float"
    state = load_checkpoint(packed_file)
    assert state.kind == "packed" and state.layers
    fresh = state.load_into(small_cnn_for("digits"))
    x = _x()
    assert torch.equal(fresh(x), packed_model(x))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_checkpoint(junk)


def test_save_float_rejects_packed(packed_model, tmp_path):
    with pytest.raises(ValueError, match="model"):
        save_float(packed_model, tmp_path / "x.safetensors")


def test_atomic_write(packed_model, packed_file):
    directory = packed_file.parent
    save_packed(packed_model, packed_file, {"second": True})  # overwrite in place
    assert sorted(p.name for p in directory.iterdir()) == ["m.safetensors"]  # no temp files
    assert load_packed(packed_file).metadata == {"second": True}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(packed_file.stat().st_mode) == 0o666 & ~umask


def test_failed_write_leaves_old_file(packed_model, packed_file):
    before = packed_file.read_bytes()
    with pytest.raises(TypeError, match="metadata"):
        save_packed(packed_model, packed_file, {"bad": object()})
    assert packed_file.read_bytes() == before
    assert len(list(packed_file.parent.iterdir())) == 1


def test_atomic_text_and_figure_writers(tmp_path, monkeypatch):
    """Reports and plots go through the same temp-file-and-rename as checkpoints: the
    result is complete, no temp file stays, and a render that fails half-way (bytes
    already written) leaves the old file whole."""
    from fusenas._atomic import save_figure_atomic, write_text_atomic

    path = write_text_atomic(tmp_path / "r.md", "# report\n")
    assert path.read_text() == "# report\n"
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure_atomic(fig, tmp_path / "p.png", dpi=50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = png.read_bytes()

    def fails_half_way(target, **kwargs):  # writes part of an image, then fails
        if hasattr(target, "write"):
            target.write(b"\x89PNG partial")
        else:
            Path(target).write_bytes(b"\x89PNG partial")
        raise RuntimeError("render failed")

    monkeypatch.setattr(fig, "savefig", fails_half_way)
    with pytest.raises(RuntimeError, match="render failed"):
        save_figure_atomic(fig, png, dpi=50)
    plt.close(fig)
    assert png.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "r.md"]


def test_bad_save_arguments(packed_model, tmp_path):
    with pytest.raises(TypeError, match="model"):
        save_packed("model", tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="path"):
        save_packed(packed_model, 42)
    with pytest.raises(TypeError, match="metadata"):
        save_packed(packed_model, tmp_path / "a.safetensors", ["not", "a", "dict"])
    with pytest.raises(FileNotFoundError, match="path"):
        save_packed(packed_model, tmp_path / "missing" / "a.safetensors")


# ------------------------------------------------------------------ bad files


def _rewrite(src: Path, dst: Path, header_fn=None, tensors_fn=None, fix_digest=True) -> Path:
    """Re-saves a checkpoint after editing its fusenas header and / or tensors."""
    with safe_open(str(src), "pt") as f:
        header = json.loads(f.metadata()["fusenas"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if tensors_fn is not None:
        tensors_fn(tensors)
        header["tensors"] = {
            n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            for n, t in tensors.items()
        }
    if header_fn is not None:
        header_fn(header)
    if fix_digest:
        header["sha256"] = qio._digest(tensors)
    save_file(tensors, str(dst), metadata={"fusenas": json.dumps(header)})
    return dst


def _expect_bad(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        load_packed(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [3, 100, -1, -200])
def test_truncated_file(packed_file, tmp_path, cut):
    data = packed_file.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut])
    _expect_bad(bad, "safetensors")


def test_garbage_and_empty_files(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(os.urandom(4096))
    _expect_bad(bad, "safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _expect_bad(empty, "safetensors")
    _expect_bad(tmp_path, "safetensors")  # a directory


def test_tampered_header_bytes(packed_file, tmp_path):
    data = packed_file.read_bytes()
    # Same length, so the safetensors offsets stay valid: only our description changes.
    old = b'\\"bits\\": 3'
    assert data.count(old) == 1
    bad = tmp_path / "edited.safetensors"
    bad.write_bytes(data.replace(old, b'\\"bits\\": 5'))
    _expect_bad(bad, "features.3")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data.replace(b'\\"layers\\"', b"\\\"layers\\'"))
    _expect_bad(broken, "safetensors")


def test_tampered_data_bytes(packed_file, tmp_path):
    data = bytearray(packed_file.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    _expect_bad(bad, "digest")


def test_wrong_format_version(packed_file, tmp_path):
    bad = _rewrite(packed_file, tmp_path / "v99.safetensors", lambda h: h.update(format_version=99))
    _expect_bad(bad, "version 99 found, version 1 expected")


def test_missing_header_entry(packed_file, tmp_path):
    with safe_open(str(packed_file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    bad = tmp_path / "plain.safetensors"
    save_file(tensors, str(bad), metadata={"other": "x"})
    _expect_bad(bad, "not a fusenas checkpoint")
    bad2 = tmp_path / "notjson.safetensors"
    save_file(tensors, str(bad2), metadata={"fusenas": "{not json"})
    _expect_bad(bad2, "JSON")


def test_wrong_codes_shape(packed_file, tmp_path):
    def grow(t):
        t["head.1.codes"] = torch.zeros(64, 96, dtype=torch.uint8)

    _expect_bad(_rewrite(packed_file, tmp_path / "shape.safetensors", tensors_fn=grow), "codes")


def test_wrong_scales_dtype(packed_file, tmp_path):
    def half(t):
        t["head.1.scales"] = t["head.1.scales"].half()

    _expect_bad(_rewrite(packed_file, tmp_path / "dtype.safetensors", tensors_fn=half), "scales")


def test_missing_tensor(packed_file, tmp_path):
    bad = _rewrite(
        packed_file, tmp_path / "m1.safetensors", tensors_fn=lambda t: t.pop("head.1.bias")
    )
    _expect_bad(bad, "head.1")
    # a tensor gone from the file but still listed in the header
    with safe_open(str(packed_file), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "pool_missing"}  # noqa: SIM118
    tensors.pop("features.1.weight")
    bad2 = tmp_path / "m2.safetensors"
    save_file(tensors, str(bad2), metadata=meta)
    _expect_bad(bad2, "missing")


def test_header_shape_disagrees_with_tensor(packed_file, tmp_path):
    def edit(h):
        h["tensors"]["features.1.weight"]["shape"] = [17]

    _expect_bad(_rewrite(packed_file, tmp_path / "hs.safetensors", header_fn=edit), "features.1")


def test_inconsistent_layer_description(packed_file, tmp_path):
    def edit(h):
        h["layers"]["head.1"]["shape"] = [64, 64]

    _expect_bad(_rewrite(packed_file, tmp_path / "desc.safetensors", header_fn=edit), "head.1")

    def unknown(h):
        h["layers"]["head.1"]["type"] = "QuantLSTM"

    _expect_bad(_rewrite(packed_file, tmp_path / "type.safetensors", header_fn=unknown), "head.1")

    def no_bits(h):
        del h["layers"]["head.1"]["bits"]

    _expect_bad(_rewrite(packed_file, tmp_path / "nobits.safetensors", header_fn=no_bits), "head.1")


def test_load_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_packed(tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="path"):
        load_packed(123)


def test_decomposed_and_quantized_models_round_trip(tmp_path):
    import fusenas
    from fusenas.models import resnet20
    from fusenas.nn.lowrank_conv import LowRankConv2d
    from fusenas.quant.io import load_model, save_float, save_packed

    torch.manual_seed(0)
    model = resnet20().eval()
    fusenas.decompose_(model, fusenas.DecomposeConfig(scheme="spatial", rank=6,
                                                      exclude=("stem*",)))  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    want = model(x)
    path = save_float(model, tmp_path / "lowrank.safetensors", {"note": "trp"})
    again, state = load_model(path)
    assert sum(isinstance(m, LowRankConv2d) for m in again.modules()) == 16
    assert state.layers["blocks.0.conv1"]["rank"] == 6
    torch.testing.assert_close(again(x), want)
    fusenas.quantize_(model, fusenas.QuantConfig(bits=8, group_size=None, types=(torch.nn.Linear,)))
    path = save_packed(model, tmp_path / "both.safetensors")
    both, _ = load_model(path)
    torch.testing.assert_close(both(x), model(x))
