"""Seeded initialisation is pinned: same seed → the same parameters and outputs as before the
layer refactor (values captured from the pre-refactor code and stored below).

Parameters are compared bit for bit (sha256 of every state-dict tensor, in key order, with the
key names); outputs are compared in float64 (the layer cast with ``.double()`` after its float32
init) through three projections at rtol 1e-9: refactors may reorder float operations, which moves
float64 results by ~1e-15 relative, while any change of the math moves them by far more. The
float32 output is compared with the same pinned values at float32 accuracy (1e-4), not bit for bit:
fast paths reorder float32 sums.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import mirrorla
from mirrorla.models import LinearVisionTransformer, PyramidVisionTransformer
from mirrorla.registry import create_attention

DIM, HEADS, GRID = 48, 3, (7, 7)
MODEL_CASES = {
    "deit": ("softmax", "mirror", "mirror_dwc", "flatten", "pola", "nala"),
    "pvt": ("softmax", "mirror", "flatten", "pola", "nala", "l2vit_lga"),
}


def state_sha(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def output_projections(out: torch.Tensor) -> tuple[float, float, float]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out = out.detach().double()
    return float(out.sum()), float((out * w).sum()), float(out.abs().sum())


def perturb(module: torch.nn.Module) -> None:
    """Seeded noise on every parameter, so zero-initialised tables (P, gates) reach the output."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def run_pinned(module: torch.nn.Module, x32: torch.Tensor, **call) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(float32 output projections, float64 output projections) of the perturbed module."""
    perturb(module)
    with torch.no_grad():
        out32 = module(x32, **call)
        out64 = module.double()(x32.double(), **call)
    return output_projections(out32), output_projections(out64)


def fingerprint(name: str, prefix: int, **options):
    torch.manual_seed(0)
    try:
        layer = create_attention(name, DIM, HEADS, num_prefix_tokens=prefix, **options)
    except ValueError:  # window attention refuses prefix tokens
        return None
    sha = state_sha(layer)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, prefix + GRID[0] * GRID[1], DIM, generator=g)
    return (sha, *run_pinned(layer, x, hw=GRID))


def model_fingerprint(kind: str, name: str):
    torch.manual_seed(0)
    if kind == "deit":
        model = LinearVisionTransformer(
            name, img_size=56, patch_size=8, embed_dim=DIM, depth=1, num_heads=HEADS, num_classes=5
        )
        size = (56, 40)
    else:
        model = PyramidVisionTransformer(
            name, img_size=64, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2),
            depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1), num_classes=5,
        )  # fmt: skip
        size = (64, 96)
    sha = state_sha(model)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, *size, generator=g)
    return (sha, *run_pinned(model.eval(), x))


#: Non-default options (pinned with the pre-refactor option names ``pe_grid``, ``kernel_size`` and
#: ``gate="static"``; written here with today's names).
OPTION_CASES = {
    "relu_dwc_gate_norm": ("linear_relu", dict(dwc_kernel=3, dwc_shared=False, gate="silu", out_norm=True)),
    "pola_static": ("pola", dict(gate=None, stream_gates=True, key_pos_grid=(5, 5))),
    "flatten_head_k3": ("flatten", dict(norm_scope="head", dwc_kernel=3, key_pos_grid=(4, 9))),
    "nala_norope": ("nala", dict(rope=False, dwc_kernel=3)),
}


def capture() -> dict:
    out = {(n, p): fingerprint(n, p) for n in mirrorla.list_attentions() for p in (0, 1)}
    out.update({(case, 1): fingerprint(n, 1, **opts) for case, (n, opts) in OPTION_CASES.items()})
    out.update({(f"{kind}:{n}", 0): model_fingerprint(kind, n) for kind in ("deit", "pvt") for n in MODEL_CASES[kind]})
    return out


# Captured from the pre-refactor code (layers as of the grid-as-argument change), seed 0.
# key: (attention or case, num_prefix_tokens) -> (state sha, float64 output projections)
PINNED: dict = {
    ("deit:flatten", 0): (
        "9bb7a3f3306c2c12",
        (0.07817203587001958, -0.5106148512370684, 1.98797434374086),
    ),
    ("deit:mirror", 0): (
        "8f87a2152a983a41",
        (0.3716117322152678, 0.7369489684539596, 2.5210289786267537),
    ),
    ("deit:mirror_dwc", 0): (
        "7b211aee9c251b7e",
        (-2.30868279913283, -0.8817486122253856, 4.472338112073797),
    ),
    ("deit:nala", 0): (
        "f771cfe9444f7d27",
        (-1.1969904586344833, -1.3841636162006978, 3.0364558317972565),
    ),
    ("deit:pola", 0): (
        "cdcb85476e3ee6ef",
        (-1.6527923688907036, -0.7085763046029755, 1.6527923688907036),
    ),
    ("deit:softmax", 0): (
        "6158880f784011eb",
        (3.216184823248019, 1.1025203457879957, 3.9045574636140747),
    ),
    ("flatten", 0): (
        "757a1d582c70f3dc",
        (-55.777651225266055, -17.937210662047384, 1528.5343620537612),
    ),
    ("flatten", 1): (
        "757a1d582c70f3dc",
        (-73.45299292233977, -19.935373453630355, 1505.6374252660034),
    ),
    ("flatten_head_k3", 1): (
        "c1262babecfea2ca",
        (-36.94150587287318, 6.240774632530359, 1333.0995165143847),
    ),
    ("l2vit_lga", 0): (
        "bca7bdd2ec7d6247",
        (109.66599432932003, 10.97813982050455, 345.540610583112),
    ),
    ("l2vit_lga", 1): (
        "bca7bdd2ec7d6247",
        (112.21174180425285, 12.137289328148068, 351.979237854708),
    ),
    ("linear_elu", 0): (
        "ab304bbe554f01e5",
        (-27.11257370245697, -5.231089345159839, 522.6505662055578),
    ),
    ("linear_elu", 1): (
        "ab304bbe554f01e5",
        (-24.005206651853797, -4.770326656896884, 520.3775677225314),
    ),
    ("linear_relu", 0): (
        "ab304bbe554f01e5",
        (-8.84982938275094, -4.177078902568479, 554.0523487187828),
    ),
    ("linear_relu", 1): (
        "ab304bbe554f01e5",
        (-7.120074647690668, -3.268934477389551, 552.86955882356),
    ),
    ("mirror", 0): (
        "f5c742fe972f3e30",
        (-41.74048270931193, -18.666728832942074, 587.2439571803307),
    ),
    ("mirror", 1): ("f5c742fe972f3e30", (-47.775864787058, -18.791538478645343, 599.8153268983762)),
    ("mirror_block", 0): (
        "2c9e2bee4da2b1c2",
        (-95.11884778764369, -15.401345097386107, 656.7501976634959),
    ),
    ("mirror_block", 1): (
        "2c9e2bee4da2b1c2",
        (-93.1436688418838, -15.293009638954128, 659.6273564212498),
    ),
    ("mirror_block_var", 0): (
        "bc088ebf7ab5777b",
        (-85.06565833001662, -3.944862925731379, 455.8655454404642),
    ),
    ("mirror_block_var", 1): (
        "bc088ebf7ab5777b",
        (-86.05612213020115, -4.039121897251416, 465.3947517567233),
    ),
    ("mirror_cross", 0): (
        "da3680085311b71e",
        (-0.9274469537348544, -3.7786302902891196, 598.4857397430619),
    ),
    ("mirror_cross", 1): (
        "da3680085311b71e",
        (-1.7951539149520972, -4.129639985575766, 603.154282223523),
    ),
    ("mirror_dwc", 0): (
        "0f69ab69d10ae8cd",
        (-115.9860974883701, -59.36507239919509, 1455.8067387605624),
    ),
    ("mirror_dwc", 1): (
        "0f69ab69d10ae8cd",
        (-116.95527337884843, -45.950920244857734, 1469.9027318074004),
    ),
    # MLLA, RALA, MALA, Agent attention: pinned from their code when they were added (after the refactor).
    ("agent", 0): ("875991da8fe6011e", (-35.239474832798905, -12.215087239634403, 1344.261260285821)),
    ("agent", 1): ("2b5e730e50a1823d", (152.32546755087594, -0.7989934645804482, 1324.8206381398782)),
    ("mala", 0): ("41c47a0e2eff626a", (-44.041227018766094, -14.694027363477907, 1017.8388473146284)),
    ("mala", 1): ("41c47a0e2eff626a", (-43.382365547721726, -12.930530102406456, 1029.1341869288196)),
    ("mlla", 0): ("adf23a36732f9d7c", (-49.520725460046165, -17.638990308621498, 470.73691497821466)),
    ("mlla", 1): ("adf23a36732f9d7c", (-49.50252245012304, -15.384256452402177, 471.62333039500436)),
    ("rala", 0): ("41c47a0e2eff626a", (-45.16940409518692, -14.209859060552422, 1021.2387229498296)),
    ("rala", 1): ("41c47a0e2eff626a", (-47.252268343493334, -13.170928842832588, 1041.5866860624067)),
    ("nala", 0): ("4689500c8e397824", (-53.520876065609, -3.6132299953748888, 1853.1699997574715)),
    ("nala", 1): ("4689500c8e397824", (-60.04624838939107, 13.600778751704295, 1918.7426274951263)),
    ("nala_cos", 0): (
        "4689500c8e397824",
        (-53.51900059025921, -3.6183341218819454, 1853.1432590223833),
    ),
    ("nala_cos", 1): (
        "4689500c8e397824",
        (-60.04838413229745, 13.61223907595717, 1918.691714237843),
    ),
    ("nala_norope", 1): (
        "d4dcbf5eae1209b9",
        (-101.61407432070371, -60.08694167970341, 1883.540996069065),
    ),
    ("pola", 0): ("50f2c268357ef5fe", (3.333609113412699, 28.455581622921663, 1089.979305985889)),
    ("pola", 1): ("50f2c268357ef5fe", (6.0583618738138085, 20.736967853679268, 1107.0949233099066)),
    ("pola_static", 1): (
        "4b251fdaa1c7cd3d",
        (80.11431041726738, -15.930534015665927, 1482.3183532517796),
    ),
    ("pvt:flatten", 0): (
        "1324e7f80d29a1f7",
        (-0.7694355005437705, 0.5997071462291199, 2.589761414900181),
    ),
    ("pvt:l2vit_lga", 0): (
        "f7dc783e46596ef4",
        (1.8443199034184115, 1.1297669279185656, 2.5005258952675735),
    ),
    ("pvt:mirror", 0): (
        "98109b1c37266967",
        (-0.3686078001132588, -0.4985097636241872, 2.3061807353047294),
    ),
    ("pvt:nala", 0): (
        "c48644ea41f9cca6",
        (-1.5091295453700946, -1.036332346858547, 1.8643445609628433),
    ),
    ("pvt:pola", 0): (
        "929633450febffc0",
        (0.7552150055745823, -0.19568855246413008, 2.243090970509769),
    ),
    ("pvt:softmax", 0): (
        "da5e60190094aa17",
        (0.748462107072229, 0.49412843559010666, 1.8102763213749462),
    ),
    ("relu_dwc_gate_norm", 1): (
        "182b0e9cbcb4fca4",
        (-65.58918029928228, -5.157647407738844, 1139.4669273514073),
    ),
    ("softmax", 0): (
        "ab304bbe554f01e5",
        (-29.1473074894706, -8.123440607259202, 549.6442075559487),
    ),
    ("softmax", 1): (
        "ab304bbe554f01e5",
        (-26.97123381553967, -7.46758393372668, 552.9592859021063),
    ),
    ("window_softmax", 0): (
        "ab304bbe554f01e5",
        (-29.1473074894706, -8.123440607259202, 549.6442075559487),
    ),
    ("window_softmax", 1): None,
}


# The same seeded initialisation on another machine: MKL picks its vectorised kernels by CPU (on the Intel
# AVX-512 machines CI now runs on, the DeiT models' patch-embedding and cls-token initialisers round the last
# bits differently than on the AMD machine the pins above were captured on; `MKL_ENABLE_INSTRUCTIONS=SSE4_2
# ATEN_CPU_CAPABILITY=avx2` on the Intel machine reproduces the pins above exactly, all 53 cases). Parameters
# with one of these hashes are a known rounding of the same init, and their outputs are pinned for them, as
# captured with the code of 2026-12-08 (its float64 outputs agree with the pins above to ~3e-9 relative, the
# float32 rounding of the parameters). Any change of the math still changes the hash and fails.
PINNED_OTHER_ROUNDING: dict = {
    ("deit:softmax", 0): ("f28fadb292081d96", (3.216184814231232, 1.1025203371375052, 3.904557464512667)),
    ("deit:mirror", 0): ("7aaa3d243d6ee491", (0.37161173152230775, 0.7369489674494367, 2.521028975598965)),
    ("deit:mirror_dwc", 0): ("046fc78d25332ac4", (-2.308682797173073, -0.8817486140767063, 4.472338114947313)),
    ("deit:flatten", 0): ("bafd3d672163e1e3", (0.07817206085818706, -0.5106148534386081, 1.9879743641699559)),
    ("deit:pola", 0): ("9f0cd16b748c1a69", (-1.6527923672495983, -0.7085763059136483, 1.6527923672495983)),
    ("deit:nala", 0): ("f529a4285fb416ec", (-1.1969904639630768, -1.3841636235834769, 3.036455842684652)),
}


def check(expected, got, what: str) -> None:
    if expected is None:
        assert got is None, what
        return
    assert got[0] == expected[0], f"{what}: parameters changed under seed 0"
    # float32: within its rounding of the pinned float64 values (fast paths reorder float32 sums).
    scale = 1e-4 * expected[1][2]  # 1e-4 of Σ|out|
    assert got[1] == pytest.approx(expected[1], rel=1e-4, abs=scale), f"{what}: float32 output changed"
    assert got[2] == pytest.approx(expected[1], rel=1e-9, abs=1e-12), f"{what}: float64 output changed"


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("name", mirrorla.list_attentions())
def test_layer_is_pinned(name, prefix):
    check(PINNED[(name, prefix)], fingerprint(name, prefix), f"{name} (prefix {prefix})")


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_layer_options_are_pinned(case):
    name, options = OPTION_CASES[case]
    check(PINNED[(case, 1)], fingerprint(name, 1, **options), case)


@pytest.mark.parametrize("kind_name", [f"{k}:{n}" for k, names in MODEL_CASES.items() for n in names])
def test_model_is_pinned(kind_name):
    kind, name = kind_name.split(":")
    got = model_fingerprint(kind, name)
    other = PINNED_OTHER_ROUNDING.get((kind_name, 0))
    expected = other if other is not None and got[0] == other[0] else PINNED[(kind_name, 0)]
    check(expected, got, kind_name)


def test_every_attention_is_pinned():
    assert {n for n, _ in PINNED if n in mirrorla.list_attentions()} == set(mirrorla.list_attentions())
