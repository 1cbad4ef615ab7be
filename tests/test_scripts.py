"""Command-line handling of the scripts in scripts/ that CI can run without their external inputs."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_official_peers_out_accepts_a_folder_or_a_json_path_and_rejects_others(tmp_path):
    peers = load_script("bench_official_peers")
    p = argparse.ArgumentParser()
    assert peers.resolve_out(p, None) is None
    assert peers.resolve_out(p, tmp_path) == tmp_path / "official_peers.json"
    assert peers.resolve_out(p, tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir()
    with pytest.raises(SystemExit):
        peers.resolve_out(p, tmp_path / "r.csv")


def test_official_peers_without_checkouts_writes_an_empty_report_to_a_folder(tmp_path, monkeypatch, capsys):
    peers = load_script("bench_official_peers")
    monkeypatch.setattr(sys, "argv", ["bench_official_peers.py", "--sizes", "16", "--out", str(tmp_path)])
    peers.main()
    err = capsys.readouterr().err
    assert "no peer ran" in err and "skipping PolaFormer" in err
    payload = json.loads((tmp_path / "official_peers.json").read_text())
    assert payload["results"] == [] and payload["meta"]["target_ratio"] == 1.3
    assert (tmp_path / "official_peers.md").read_text().startswith("## Official peers vs ours")


def test_official_peers_rejects_a_size_that_is_not_a_square(monkeypatch):
    peers = load_script("bench_official_peers")
    monkeypatch.setattr(sys, "argv", ["bench_official_peers.py", "--sizes", "3000"])
    with pytest.raises(SystemExit):
        peers.main()


def test_official_peers_table_gives_the_attention_budget_of_the_target():
    peers = load_script("bench_official_peers")
    meta = {
        "date": "d", "command": "c", "threads": 2, "repeats": 5, "official": {},
        "machine": {"cpu_model": "cpu", "logical_cpus": 2, "torch": "t"},
    }  # fmt: skip
    row = {
        "peer": "L²ViT LGA", "N": 3136, "status": "ok", "output_rel_rms": 1e-8, "grad_rel_rms": 1e-7,
        "worst_grad": "qkv.weight", "official_ms": 130.0, "ours_ms": 120.0, "projections_ms": 90.0,
        "ratio": 130 / 120, "ceiling": 130 / 90,
    }  # fmt: skip
    last = peers.markdown(meta, [row]).splitlines()[-1]
    assert last.endswith("| 1.08 | no | 90.0 | 1.44 | 30.0 | 10.0 |")  # 130/1.3 − 90 = 10 ms allowed, 30 spent


def test_profile_layer_prints_the_gemm_share(monkeypatch, capsys):
    script = load_script("profile_layer")
    monkeypatch.setattr(sys, "argv", ["profile_layer.py", "l2vit_lga", "--tokens", "64", "--dim", "48", "--heads", "2"])
    script.main()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("l2vit_lga, N=64, C=48, H=2") and "matrix products" in last and "batched" in last


def test_profile_layer_rejects_unknown_names_and_non_square_sizes(monkeypatch):
    script = load_script("profile_layer")
    for argv in (["nope"], ["mirror", "--tokens", "60"]):
        monkeypatch.setattr(sys, "argv", ["profile_layer.py", *argv])
        with pytest.raises(SystemExit):
            script.main()
