"""Every run records what produced it: commit and dirty tree, library versions, the CPU capability torch
dispatches to, threads (and the CUDA device when used) — in the run folder's config.json, in each compare
run's result.json and in the benches' machine record."""

from __future__ import annotations

import json
import re

import torch

from mirrorla.bench.machine import code_version, describe_machine, provenance
from mirrorla.data import InMemoryImages
from mirrorla.data.datasets import DatasetInfo
from mirrorla.engine import TrainConfig, train

KEYS = {"commit", "torch", "numpy", "python", "cpu_capability", "cpu_model", "threads", "device", "cuda_device"}


def test_provenance_names_the_code_and_the_numerics():
    record = provenance("cpu")
    assert KEYS <= set(record)
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch"] == torch.__version__ and record["threads"] == torch.get_num_threads()
    assert record["cuda_device"] is None and record["device"] == "cpu"
    version = code_version()
    if version["commit"] is None:  # an installed copy: said so, not left blank
        assert "not a git checkout" in version["note"]
    else:
        assert re.fullmatch(r"[0-9a-f]{40}", version["commit"]) and isinstance(version["dirty"], bool)
        assert version["dirty"] == bool(version["changed_files"])
    assert describe_machine("cpu")["provenance"]["cpu_capability"] == record["cpu_capability"]


def _data(n_train=32, n_eval=16):
    g = torch.Generator().manual_seed(0)

    def make(n):
        return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10

    common = dict(mean=(0.5,), std=(0.3,), image_size=28)
    train_set = InMemoryImages(*make(n_train), augment=False, **common)
    eval_set = InMemoryImages(*make(n_eval), augment=False, **common)
    return train_set, eval_set, DatasetInfo("synthetic", 10, 1, 28, (0.5,), (0.3,), n_train, n_eval)


def test_a_run_folder_records_its_provenance_and_a_resume_keeps_the_first(tmp_path):
    data = _data()
    cfg = TrainConfig(attention="linear_relu", epochs=1, batch_size=16, embed_dim=32, depth=1, num_heads=2,
                      patch_size=7, mlp_ratio=2.0, progress=False, threads=None, out_dir=str(tmp_path))  # fmt: skip
    out = train(cfg, data)
    first = json.loads((tmp_path / "config.json").read_text())["provenance"]
    assert KEYS <= set(first) and first == out["provenance"]
    assert first["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    train(cfg.replace(resume=str(tmp_path)), data)  # a finished run resumed: nothing left to train
    resumed = json.loads((tmp_path / "config.json").read_text())["provenance"]
    assert resumed["earlier"] == [first] and KEYS <= set(resumed)


def test_the_results_headers_name_the_code():
    from mirrorla.engine.trainer import describe_provenance, environment_summary

    env = environment_summary()
    assert env["provenance"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    text = describe_provenance(env)
    assert text.endswith(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    commit = env["provenance"]["commit"]
    assert (f"code {commit[:10]}" in text) if commit else ("not a git checkout" in text)
    assert describe_provenance({"torch": "2.14.1"}) == "code: not recorded"  # results written before provenance
