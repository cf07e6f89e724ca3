"""Packed CPU weights in 2 MiB-aligned memory advised for huge pages
(fusenas/weight_memory.py, csrc/cpu/huge_pages.cpp): placement, lifetime, the
off switch, and that every place that makes codes puts them there."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

import fusenas
from fusenas import weight_memory
from fusenas.info import weight_memory_info
from fusenas.ops import _native, kbit_lut
from fusenas.quant.io import load_packed, save_packed

ext = _native.cpu()
needs_ext = pytest.mark.skipif(ext is None, reason="fusenas._C not built")
BIG = (1024, 4096)  # 4 MiB of float32; 2 MiB of 4-bit codes


@pytest.fixture(autouse=True)
def _huge_pages_on(monkeypatch):
    monkeypatch.delenv("FUSENAS_HUGE_PAGES", raising=False)


@needs_ext
def test_buffer_is_aligned_zeroed_and_outlives_its_name():
    buf = ext.HugePageBuffer(3 << 20)
    assert buf.nbytes == 3 << 20
    if weight_memory.thp_setting() in ("always", "madvise"):
        assert buf.advised  # madvise(MADV_HUGEPAGE) accepted
    t = torch.frombuffer(buf, dtype=torch.uint8)
    assert t.data_ptr() % (2 << 20) == 0
    assert int(t.count_nonzero()) == 0
    del buf
    gc.collect()
    t.fill_(7)  # the tensor keeps the mapping alive
    assert int(t[-1]) == 7 and int(t.sum()) == 7 * (3 << 20)


@needs_ext
def test_place_copies_large_cpu_tensors_only():
    big = torch.randn(BIG)
    placed = weight_memory.place(big)
    assert placed is not big and weight_memory.is_placed(placed)
    assert placed.dtype == big.dtype and placed.shape == big.shape and placed.is_contiguous()
    assert torch.equal(placed, big)
    before = placed.clone()
    big.fill_(float("nan"))  # its own memory, not a view of the source
    assert torch.equal(placed, before)

    small = torch.randn(16, 16)
    assert weight_memory.place(small) is small
    copied = weight_memory.place(small, copy=True)
    assert copied is not small and torch.equal(copied, small)


@needs_ext
def test_empty_is_zeroed_with_the_shape_and_dtype_asked_for():
    t = weight_memory.empty((3, 1 << 20), torch.int16)
    assert t.shape == (3, 1 << 20) and t.dtype == torch.int16
    assert weight_memory.is_placed(t) and int(t.count_nonzero()) == 0
    small = weight_memory.empty((4, 4), torch.float32)
    assert small.shape == (4, 4) and int(small.count_nonzero()) == 0


def test_off_switch_leaves_torch_allocating(monkeypatch):
    monkeypatch.setenv("FUSENAS_HUGE_PAGES", "0")
    assert not weight_memory.enabled()
    big = torch.randn(BIG)
    assert weight_memory.place(big) is big
    if ext is not None:
        assert "FUSENAS_HUGE_PAGES=0" in weight_memory_info()


@needs_ext
def test_packed_codes_table_copies_and_loaded_files_are_placed(tmp_path):
    w = torch.randn(BIG) * 0.02
    pw = fusenas.quantize_weight(w, 4, 128, True)
    assert weight_memory.is_placed(pw.codes)
    x = torch.randn(1, BIG[1])
    torch.testing.assert_close(
        fusenas.ops.kbit_matmul(x, pw), x @ fusenas.quant.dequantize(pw).T, rtol=1e-4, atol=1e-4
    )

    pw2 = fusenas.quantize_weight(torch.randn(4096, 4096) * 0.02, 2, 128, True)
    if ext.kbit_lut_available():
        lut = kbit_lut.lut_weight(ext, pw2.codes, pw2.scales, None, 4096, 2, False)
        assert weight_memory.is_placed(lut.codes)

    model = nn.Sequential(nn.Linear(BIG[1], BIG[0]))
    fusenas.quantize_(model, fusenas.QuantConfig(bits=4))
    path = tmp_path / "m.safetensors"
    save_packed(model, path)
    loaded = load_packed(path).load_into(nn.Sequential(nn.Linear(BIG[1], BIG[0])))
    assert weight_memory.is_placed(loaded[0].codes)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@needs_ext
def test_quant_linear_copies_stay_equal():
    layer = fusenas.nn.QuantLinear.from_float(nn.Linear(BIG[1], BIG[0]), bits=4)
    assert weight_memory.is_placed(layer.codes)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    twin = copy.deepcopy(layer)
    x = torch.randn(3, BIG[1])
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k])
