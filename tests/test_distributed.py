"""DDP: two CPU processes under torchrun (gloo) train the same tiny run and agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

# Each rank trains, then dumps what it computed to rank<r>.json (the test harness writes these, not the
# engine: the engine writes only from rank 0).
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from mirrorla.data import InMemoryImages
    from mirrorla.data.datasets import DatasetInfo
    from mirrorla.engine import TrainConfig, train

    out_dir = sys.argv[1]
    g = torch.Generator().manual_seed(0)
    templates = torch.randint(0, 256, (10, 1, 28, 28), generator=g).float()
    def make(n):
        labels = torch.arange(n) % 10
        return (templates[labels] + torch.randn(n, 1, 28, 28, generator=g) * 60).clamp(0, 255).byte(), labels
    common = dict(mean=(0.5,), std=(0.3,), image_size=28)
    data = (InMemoryImages(*make(130), augment=True, **common), InMemoryImages(*make(45), augment=False, **common),
            DatasetInfo("synthetic", 10, 1, 28, (0.5,), (0.3,), 130, 45))
    cfg = TrainConfig(attention="mirror", epochs=2, batch_size=16, embed_dim=16, depth=1, num_heads=2,
                      patch_size=7, progress=False, out_dir=out_dir, threads=1, device="cpu")
    result = train(cfg, data)
    rank = int(os.environ["RANK"])
    params = {k: v.double().sum().item() for k, v in result["model"].state_dict().items()}
    with open(os.path.join(os.path.dirname(out_dir), f"rank{rank}.json"), "w") as fh:
        json.dump({"history": result["history"], "params": params, "world": os.environ["WORLD_SIZE"]}, fh)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ranks_agree(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(script), str(run_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == "2"
    # Same weights on both ranks (DDP averaged the gradients), and the engine's own check recorded it.
    assert r0["params"] == r1["params"]
    for h0, h1 in zip(r0["history"], r1["history"], strict=True):
        assert h0["rank_param_checksums"][0] == h0["rank_param_checksums"][1]
        # Metrics are all-reduced: identical on both ranks, and they cover the data exactly.
        same = {k: v for k, v in h0.items() if "time" not in k and "img_s" not in k}
        assert same == {k: v for k, v in h1.items() if "time" not in k and "img_s" not in k}
        assert h0["eval_images"] == 45  # 23 + 22 images, each evaluated once
        assert h0["train_images"] == 2 * (65 // 16) * 16  # each rank: 65 images → 4 full batches
    # Only rank 0 wrote the run directory: one metrics line per epoch, one checkpoint pointer.
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["epoch"] == 1
