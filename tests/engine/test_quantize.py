"""int8 matmuls against their fp32 references (parity on random weights; the adapted model's
quality is measured by `dlsp eval`), per-token scaling and SmoothQuant's folding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import Engine, InfillRequest
from engine.checkpoint import load_model, load_tokenizer
from engine.quantize import (
    Int8Linear,
    Int8Rows,
    ShortlistHead,
    activation_max,
    calibration_ids,
    int8_available,
    int8_linear_ref,
    own_parameters_,
    quantize_int8,
    smooth_,
)

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no fbgemm int8 linear")


@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_the_dequantized_reference(bias):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(96, 40, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 96, generator=g) * 0.05)
    x = torch.randn(2, 7, 96, generator=g)
    q = Int8Linear(lin)
    got, ref, exact = q(x), int8_linear_ref(x, q), lin(x).detach()
    assert got.shape == (2, 7, 40) and got.dtype == torch.float32
    # weights: per-channel rounding only; activations: 7-bit dynamic quantization on top
    assert (int8_linear_ref(x, q) - exact).norm() / exact.norm() < 0.01
    assert (got - ref).norm() / ref.norm() < 0.03


@pytest.mark.parametrize("fixture", ["tiny_ckpt", "tiny_dream_ckpt"])  # dream: q/k/v biases, untied head
def test_quantized_engine_runs_and_mostly_agrees_with_fp32(fixture, request):
    tiny_ckpt = request.getfixturevalue(fixture)
    fp32 = Engine.from_pretrained(tiny_ckpt, device="cpu", int8=False)
    q = Engine.from_pretrained(tiny_ckpt, device="cpu", int8=True)
    assert q.info()["int8"] and not fp32.info()["int8"] and q.info()["params"] == fp32.info()["params"]
    # every matmul but the LM head (kept in float: it decides the token) is int8
    assert [n for n, m in q.model.named_modules() if isinstance(m, nn.Linear)] == ["lm_head"]
    # per block: q/k/v fused, gate/up fused, wo, w_down
    assert sum(isinstance(m, Int8Linear) for m in q.model.modules()) == 4 * q.args.n_layers
    assert q.model.layers[0].fused_qkv.out_features == (q.args.n_heads + 2 * q.args.n_kv_heads) * q.args.head_dim
    ids = torch.randint(3, q.args.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = fp32.model(ids), q.model(ids)
    top2 = a.topk(2, dim=-1).values
    sure = (top2[..., 0] - top2[..., 1]) > 0.5  # compare argmax only where fp32 is decided
    assert (a.argmax(-1) == b.argmax(-1))[sure].float().mean() > 0.9
    res = q.infill(InfillRequest(prefix="def f(x):\n    return ", suffix="\n", hole_tokens=4, max_new_tokens=4))
    assert res.forward_passes >= 1


def test_auto_quantizes_large_models_only(tiny_ckpt, monkeypatch):
    import engine.engine as engine_mod

    monkeypatch.delenv("DLSP_INT8", raising=False)
    assert not Engine.from_pretrained(tiny_ckpt, device="cpu").int8
    monkeypatch.setattr(engine_mod, "MIN_PARAMS", 1000)  # the tiny model counts as large
    assert Engine.from_pretrained(tiny_ckpt, device="cpu").int8
    monkeypatch.setenv("DLSP_INT8", "0")
    assert not Engine.from_pretrained(tiny_ckpt, device="cpu").int8
    monkeypatch.setattr(engine_mod, "MIN_PARAMS", 10 ** 12)
    monkeypatch.setenv("DLSP_INT8", "1")
    assert Engine.from_pretrained(tiny_ckpt, device="cpu").int8
    m = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2)))
    assert quantize_int8(m) == 2 and isinstance(m[1][0], Int8Linear)


def test_per_token_scaling_keeps_a_small_row_exact_beside_a_large_one():
    """One input scale for the whole call would round a row 1000x smaller than its neighbour to
    ~zero; each row is scaled by its own max, so both come out within int8 error."""
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(64, 32, bias=True)
    x = torch.randn(2, 64, generator=g)
    x[1] *= 1e-3
    q, exact = Int8Linear(lin), lin(x).detach()
    got = q(x)
    for r in range(2):
        no_bias = exact[r] - lin.bias.detach()
        assert (got[r] - exact[r]).norm() / no_bias.norm() < 0.03
    # the unscaled call (what the layer did before) loses the small row
    w, _ = q.dequantized()
    packed = torch.ops.quantized.linear_prepack(
        torch.quantize_per_channel(w, (w.abs().amax(1) / 127).double(), torch.zeros(32, dtype=torch.long), 0,
                                   torch.qint8), None)
    plain = torch.ops.quantized.linear_dynamic(x, packed, True)
    assert (plain[1] - (exact[1] - lin.bias.detach())).norm() / (exact[1] - lin.bias.detach()).norm() > 0.2


@pytest.mark.parametrize("family", ["llada", "dream"])  # tied head / untied with q/k/v biases
def test_smoothing_keeps_the_function(tmp_path, family):
    from engine.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / family, family=family)
    model, _ = load_model(ckpt)
    assert model.args.n_heads != model.args.n_kv_heads  # the value-group folding is exercised
    ids = torch.randint(3, model.args.vocab_size, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(ids)
    calib = calibration_ids(load_tokenizer(ckpt), 2, rows=2, tokens=40)
    x_max = activation_max(model, calib)
    assert set(x_max) >= {f"layers.0.{n}" for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
    w0 = model.layers[0].w_down.weight.clone()
    smooth_(model, x_max)
    assert not torch.allclose(model.layers[0].w_down.weight, w0)  # something moved
    with torch.inference_mode():
        after = model(ids)
    assert (after - before).abs().max() / before.abs().max() < 1e-4


def test_smoothing_removes_the_error_of_an_outlier_channel(tmp_path):
    """A channel of the normed input 100x larger than the rest (the same function: the weights
    behind it divided by 100) sets the activation scale for every channel; smoothing moves it into
    the weights, and the int8 model lands much closer to fp32."""
    from engine.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "m", family="llada")
    ids = torch.randint(3, 200, (1, 30), generator=torch.Generator().manual_seed(1))
    calib = calibration_ids(load_tokenizer(ckpt), 2, rows=2, tokens=40)

    def outlier_model():
        model, _ = load_model(ckpt)
        with torch.no_grad():
            for blk in model.layers:
                blk.ffn_norm.weight[5] *= 100
                blk.w_gate.weight[:, 5] /= 100
                blk.w_up.weight[:, 5] /= 100
        return model

    ref_model = outlier_model()
    with torch.inference_mode():
        ref = ref_model(ids).log_softmax(-1)
    errs = {}
    for name, cal in (("plain", None), ("smoothed", calib)):
        m = outlier_model()
        quantize_int8(m, cal)
        with torch.inference_mode():
            errs[name] = torch.nn.functional.kl_div(m(ids).log_softmax(-1), ref, log_target=True,
                                                    reduction="batchmean").item()
    assert errs["smoothed"] < 0.5 * errs["plain"]


def test_int8_rows_are_the_table_within_half_a_step_per_row():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(20000, 48, generator=g) * torch.rand(20000, 1, generator=g)  # rows of different ranges
    w[7] = 0.0  # an all-zero row keeps a usable scale
    rows = Int8Rows(w)  # more rows than one quantization chunk
    table = rows.dequantized()
    assert rows.q.dtype == torch.int8 and table.shape == w.shape
    step = w.abs().amax(1, keepdim=True) / 127
    assert ((table - w).abs() <= step / 2 + 1e-7).all()
    assert not table[7].any()
    ids = torch.tensor([[3, 19999, 7], [0, 0, 12345]])
    got = rows(ids)
    assert got.shape == (2, 3, 48) and got.dtype == torch.float32
    assert torch.equal(got, table[ids])


def test_shortlist_head_rescores_its_top_rows_from_the_int8_rows():
    g = torch.Generator().manual_seed(5)
    head = nn.Linear(48, 6000, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(6000, 48, generator=g) * 0.1)
    h = torch.randn(3, 48, generator=g)
    exact = head(h).detach()
    sl = ShortlistHead(head, k=16)
    assert not [t for t in (*sl.parameters(), *sl.buffers()) if t.is_floating_point() and t.numel() >= 6000 * 48]
    ref = h @ sl.rows.dequantized().T  # (3, V): float activations, int8 rows
    got = sl(h[None])[0]
    assert got.shape == exact.shape
    top2 = ref.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1] > 1e-4).all()  # (ties could differ between the two paths)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    top = ref.topk(8, dim=-1)
    assert torch.allclose(got.gather(1, top.indices), top.values, atol=1e-5)  # the likely tokens: rescored
    assert (got - ref).abs().max() > 1e-6  # the tail: int8 estimates
    assert (got - exact).norm() / exact.norm() < 0.05
    # the rows' own rounding, against the float head, is below the int8 matmul's (7-bit activations too)
    assert (ref - exact).norm() < 0.6 * (sl.q(h) - exact).norm()


def test_quantize_gives_a_large_vocabulary_one_int8_table_for_embedding_and_head(tmp_path):
    from engine.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "m", family="llada", vocab_size=5000)
    model, _ = load_model(ckpt)
    emb = model.tok_emb.weight.detach().clone()
    ids = torch.randint(0, 5000, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before = model(ids)
    quantize_int8(model, calibration_ids(load_tokenizer(ckpt), 2, rows=1, tokens=30))
    assert isinstance(model.lm_head, ShortlistHead) and model.tok_emb is model.lm_head.rows  # still tied
    assert ((model.tok_emb.dequantized() - emb).abs() <= model.tok_emb.scale / 2 + 1e-7).all()
    own_parameters_(model)
    assert not [n for n, p in model.named_parameters() if p.shape == emb.shape]  # no float table left
    with torch.inference_mode():
        after = model(ids)
    top2 = before.topk(2, dim=-1).values
    sure = (top2[..., 0] - top2[..., 1]) > 0.5
    assert (before.argmax(-1) == after.argmax(-1))[sure].float().mean() > 0.9


def test_own_parameters_copies_out_of_the_loaded_storage_and_keeps_ties(tmp_path):
    from engine.testing import make_tiny_checkpoint

    model, _ = load_model(make_tiny_checkpoint(tmp_path / "m", family="llada"))  # a small vocabulary: float head
    emb = model.tok_emb.weight
    own_parameters_(model)
    assert model.tok_emb.weight is not emb and torch.equal(model.tok_emb.weight, emb)
    assert model.lm_head.weight is model.tok_emb.weight  # still tied
    assert model.tok_emb.weight.untyped_storage().data_ptr() != emb.untyped_storage().data_ptr()


def test_a_rows_result_does_not_depend_on_the_other_rows():
    """Lazy steps run one row where full steps run the whole hole: the same row must give the
    same numbers in both (the dynamic quantization range is pinned, not taken from the batch)."""
    g = torch.Generator().manual_seed(2)
    q = Int8Linear(nn.Linear(64, 16))
    x = torch.randn(5, 64, generator=g)
    x[3] *= 40  # a row with a very different range
    x[4] = x[4].abs()  # and one with no negative values
    alone = torch.cat([q(x[i:i + 1]) for i in range(5)])
    assert torch.equal(q(x), alone)
    assert torch.equal(q(x[None])[0], alone)
