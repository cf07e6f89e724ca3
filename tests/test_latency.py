"""Latency-aware search pieces: encodings, the predictor fit, collect, and the search loss term."""

from __future__ import annotations

import pytest
import torch

from fusenas.cli import main as cli_main
from fusenas.search import latency
from fusenas.search.config import SearchConfig
from fusenas.search.pcdarts import run_search
from fusenas.search.spaces import DartsSupernet
from fusenas.search.spaces.nb201 import Nb201Supernet


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_encodings_of_sampled_architectures(space):
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        arch = latency.sample_architecture(space, gen)
        enc = latency.encode(space, arch)
        assert enc.shape == (latency.encoding_size(space),)
        # DARTS: 8 kept edges in each of 2 cells; NB201: one op on each of 6 edges.
        assert int(enc.sum()) == (16 if space == "darts" else 6)


def test_supernet_relaxation_matches_the_encoding_layout():
    net = DartsSupernet(channels=4, layers=3, k=2)
    enc = latency.encode_supernet(net)
    assert enc.shape == (latency.encoding_size("darts"),) and enc.requires_grad
    # Each node of each cell keeps two edges: its rows sum to 2, 8 per cell in total.
    torch.testing.assert_close(enc.sum(), torch.tensor(16.0), atol=1e-5, rtol=0)
    nb = Nb201Supernet(channels=4, cells_per_stage=1, k=2)
    torch.testing.assert_close(latency.encode_supernet(nb).sum(), torch.tensor(6.0))


def _synthetic_records(n: int, seed: int):
    # Latency = 1 ms + a fixed cost per (edge, op): additive, as real op costs roughly are.
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(latency.encoding_size("nb201"), generator=gen) * 2.0
    records = []
    for _ in range(n):
        arch = latency.sample_architecture("nb201", gen)
        ms = 1.0 + float(latency.encode("nb201", arch) @ cost)
        records.append({"space": "nb201", "arch": arch, "latency_ms": ms})
    return records


def test_predictor_fits_a_known_relation(tmp_path):
    model, report = latency.fit(_synthetic_records(300, 1), steps=1500, seed=0)
    assert report.test_mean_rel_error < 0.05, report
    path = tmp_path / "pred.safetensors"
    model.save(path)
    again = latency.LatencyPredictor.load(path)
    enc = latency.encode("nb201", "|none~0|+|skip_connect~0|none~1|+|none~0|none~1|none~2|")
    torch.testing.assert_close(again(enc), model(enc))
    with pytest.raises(ValueError, match="fitted on space 'nb201'"):
        again.check_space("darts")


def test_search_reports_measured_and_predicted_latency_of_the_found_cell(tmp_path):
    records = latency.collect("nb201", 8, tmp_path / "lat.jsonl", channels=4, layers=1,
                              image_size=8, repeats=2, progress=False)  # fmt: skip
    model, _ = latency.fit(records, steps=100)
    assert model.measured_on["channels"] == 4 and model.measured_on["image_size"] == 8
    model.save(tmp_path / "p.safetensors")
    cfg = SearchConfig(space="nb201", dataset="digits", limit=96, channels=4, layers=1, k=2,
                       epochs=1, warmup_epochs=0, batch_size=32, eval_limit=16, threads=1,
                       latency_weight=0.1, latency_predictor=str(tmp_path / "p.safetensors"),
                       out_dir=str(tmp_path / "s"))  # fmt: skip
    last = run_search(cfg, progress=False).history[-1]
    assert last["final_measured_ms"] > 0 and last["final_predicted_ms"] > 0


def test_collect_times_real_networks_and_cli_fit(tmp_path, capsys):
    out = tmp_path / "lat.jsonl"
    assert cli_main(["latency", "collect", "--space", "nb201", "--n", "6", "--channels", "4",
                     "--layers", "1", "--repeats", "2", "--image-size", "8", "-o", str(out),
                     "--no-progress"]) == 0  # fmt: skip
    records = latency.read_records(out)
    assert len(records) == 6 and all(r["latency_ms"] > 0 for r in records)
    assert cli_main(["latency", "fit", str(out), "-o", str(tmp_path / "p.safetensors"),
                     "--steps", "50"]) == 0  # fmt: skip
    assert "held-out" in capsys.readouterr().out


def test_latency_term_pushes_the_architecture_towards_cheap_ops(tmp_path):
    # A predictor where nor_conv_3x3 is expensive and everything else free.
    records = []
    gen = torch.Generator().manual_seed(2)
    for _ in range(200):
        arch = latency.sample_architecture("nb201", gen)
        ms = 1.0 + 5.0 * arch.count("nor_conv_3x3")
        records.append({"space": "nb201", "arch": arch, "latency_ms": ms})
    model, _ = latency.fit(records, steps=800)
    pred = tmp_path / "pred.safetensors"
    model.save(pred)
    common = dict(space="nb201", dataset="digits", limit=128, channels=4, layers=1, k=2,
                  epochs=2, warmup_epochs=0, batch_size=32, eval_limit=16, threads=1,
                  arch_lr=0.05)  # fmt: skip
    plain = run_search(SearchConfig(**common, out_dir=str(tmp_path / "a")), progress=False)
    aware = run_search(SearchConfig(**common, out_dir=str(tmp_path / "b"), latency_weight=1.0,
                                    latency_predictor=str(pred)), progress=False)  # fmt: skip
    conv = 3  # nor_conv_3x3's column
    w_plain = torch.softmax(plain.model.alphas.detach(), -1)[:, conv].mean()
    w_aware = torch.softmax(aware.model.alphas.detach(), -1)[:, conv].mean()
    assert w_aware < w_plain
    assert "predicted_latency_ms" in aware.history[-1]


def test_bad_latency_inputs(tmp_path):
    with pytest.raises(ValueError, match="space"):
        latency.encode("mobilenet", "x")
    with pytest.raises(ValueError, match="at least 5"):
        latency.fit(_synthetic_records(3, 0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"space": "nb201"}\n')
    with pytest.raises(ValueError, match="line 1"):
        latency.read_records(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a latency predictor"):
        latency.LatencyPredictor.load(tmp_path / "junk.safetensors")
