"""Training recipe: objective shapes, exact resume, and a 2-process DDP run on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.config import ModelArgs
from engine.testing import byte_bpe_tokenizer
from engine.training.objective import ObjectiveConfig, corrupt, fim_example
from engine.training.train import Trainer, parse

A = ModelArgs(vocab_size=50, mask_id=0, eos_id=1, pad_id=1, bos_id=2)


def test_fim_example_keeps_length_and_pads_the_middle_with_eos():
    g = torch.Generator().manual_seed(0)
    is_nl = torch.zeros(50, dtype=torch.bool)
    is_nl[10] = True
    seq = torch.tensor([2] + [5, 6, 10, 7, 8, 10, 9, 9, 10, 11, 12, 10, 13] * 3)
    for _ in range(50):
        out, s, m, e = fim_example(seq, A, is_nl, ObjectiveConfig(), g)
        assert out.shape == seq.shape and 1 <= s < e <= len(seq) and s < m <= e
        assert all(t == 1 for t in out[m:e].tolist())  # the pads lie between middle end and region end
        assert torch.equal(out[:s], seq[:s])
        region = out[s:e].tolist()
        n_mid = len(region) - region[::-1].index(next(t for t in region[::-1] if t != 1)) if any(
            t != 1 for t in region) else 0
        assert all(t == 1 for t in region[n_mid:])  # EOS pads close the middle


def test_kind_weights_choose_the_shape_of_middles():
    """(1, 0, 0): every middle is one whole line (from a line start up to, not including, its line
    break); equal weights also draw multi-line middles and spans."""
    is_nl = torch.zeros(50, dtype=torch.bool)
    is_nl[10] = True
    seq = torch.tensor([2] + [5, 6, 10, 7, 8, 10, 9, 9, 10, 11, 12, 10, 13] * 3)
    lines = ObjectiveConfig(kind_weights=(1.0, 0.0, 0.0), max_pad=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        out, s, m, e = fim_example(seq, A, is_nl, lines, g)
        assert seq[s - 1] == 10 and seq[m] == 10 and 10 not in seq[s:m].tolist()
    g = torch.Generator().manual_seed(0)
    shapes = set()
    for _ in range(40):
        out, s, m, e = fim_example(seq, A, is_nl, ObjectiveConfig(max_pad=0), g)
        shapes.add("line" if seq[s - 1] == 10 and seq[m] == 10 and 10 not in seq[s:m].tolist() else "other")
    assert shapes == {"line", "other"}


def test_kind_weights_are_parsed_and_checked():
    assert parse(["--kind-weights", "2,1,1"]).kind_weights == (2.0, 1.0, 1.0)
    for bad in ("1,1", "a,b,c", "0,0,0", "-1,1,1", "nan,1,1", "inf,1,1"):
        with pytest.raises(SystemExit):
            parse(["--kind-weights", bad])


def test_corrupt_masks_only_the_region_and_weights_by_inverse_t():
    g = torch.Generator().manual_seed(1)
    is_nl = torch.zeros(50, dtype=torch.bool)
    batch = torch.randint(3, 50, (8, 32), generator=g)
    batch[:, 0] = 2
    noisy, clean, mask, w = corrupt(batch, A, is_nl, ObjectiveConfig(fim_rate=0.5), g)
    assert mask.any(1).all()
    assert (noisy[mask] == 0).all() and torch.equal(noisy[~mask], clean[~mask])
    assert not mask[:, 0].any()  # bos is never masked
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()


def test_left_to_right_holes_mask_a_tail_of_each_middle():
    """ltr_rate=1: every hole is a decoded head (visible) and a masked tail running to the region
    end, pads included: no masked position left of a visible one inside a hole."""
    g = torch.Generator().manual_seed(3)
    is_nl = torch.zeros(50, dtype=torch.bool)
    is_nl[10] = True
    row = torch.tensor([2] + [5, 6, 10, 7, 8, 10, 9, 9, 10, 11, 12, 10, 13] * 5)
    batch = row.repeat(16, 1)
    cfg = ObjectiveConfig(fim_rate=1.0, ltr_rate=1.0, holes_per_row=2, max_pad=4)
    noisy, clean, mask, _ = corrupt(batch, A, is_nl, cfg, g)
    for b in range(16):
        for lo, hi in ((0, 33), (33, 66)):
            pos = mask[b, lo:hi].nonzero().flatten().tolist()
            assert pos == list(range(pos[0], pos[-1] + 1))  # one contiguous masked tail per hole
            after = lo + pos[-1] + 1
            assert after == hi or clean[b, after] != 1  # the tail runs through the last EOS pad
    # with random masking (ltr_rate=0) the same holes are not contiguous tails
    g = torch.Generator().manual_seed(3)
    _, _, mask_r, _ = corrupt(batch, A, is_nl, ObjectiveConfig(fim_rate=1.0, holes_per_row=2, max_pad=4), g)
    gaps = sum(int((mask_r[b, 1:].int() - mask_r[b, :-1].int()).clamp(min=0).sum()) for b in range(16))
    assert gaps > 2 * 16


def test_frontier_weight_scales_the_first_masked_slot_of_left_to_right_holes():
    """frontier_weight=4: in each left-to-right hole the first masked slot weighs 4x each other
    masked slot, masks are unchanged, and the flat weights still sum to the batch size."""
    is_nl = torch.zeros(50, dtype=torch.bool)
    is_nl[10] = True
    row = torch.tensor([2] + [5, 6, 10, 7, 8, 10, 9, 9, 10, 11, 12, 10, 13] * 5)
    batch = row.repeat(8, 1)
    base = ObjectiveConfig(fim_rate=1.0, ltr_rate=1.0, holes_per_row=2, max_pad=4)
    _, _, mask1, w1 = corrupt(batch, A, is_nl, base, torch.Generator().manual_seed(5))
    cfg = ObjectiveConfig(fim_rate=1.0, ltr_rate=1.0, holes_per_row=2, max_pad=4, frontier_weight=4.0)
    _, _, mask4, w4 = corrupt(batch, A, is_nl, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(mask1, mask4)
    assert float(w4.sum()) == pytest.approx(8.0)
    for b in range(8):
        for lo, hi in ((0, 33), (33, 66)):
            pos = mask4[b, lo:hi].nonzero().flatten() + lo
            first, rest = pos[0], pos[1:]
            assert (w1[b, pos] == w1[b, first]).all()  # equal weights without the option
            if len(rest):
                assert float(w4[b, first]) == pytest.approx(4 * float(w4[b, rest[0]]))
                assert (w4[b, rest] == w4[b, rest[0]]).all()


def test_frontier_weight_is_parsed_and_checked():
    assert parse(["--frontier-weight", "4"]).frontier_weight == 4.0
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(SystemExit):
            parse(["--frontier-weight", bad])


def test_loss_weightings():
    g = torch.Generator().manual_seed(2)
    is_nl = torch.zeros(50, dtype=torch.bool)
    batch = torch.randint(3, 50, (8, 32), generator=g)
    batch[:, 0] = 2
    state = g.get_state()
    _, _, mask, w = corrupt(batch, A, is_nl, ObjectiveConfig(weighting="flat"), g)
    # flat: sum(ce * w) / B is the mean over every masked token of the batch
    assert torch.allclose(w[mask], torch.full_like(w[mask], 8 / mask.sum()))
    g.set_state(state)
    _, _, mask_e, w_e = corrupt(batch, A, is_nl, ObjectiveConfig(weighting="elbo"), g)
    assert torch.equal(mask, mask_e)  # the same corruption, only the weights differ
    # elbo: every masked position of a row carries the same 1/(t * region) weight
    for b in range(8):
        assert torch.allclose(w_e[b][mask_e[b]], w_e[b][mask_e[b]][0].expand(int(mask_e[b].sum())))
    with pytest.raises(ValueError, match="weighting"):
        corrupt(batch, A, is_nl, ObjectiveConfig(weighting="nope"), g)


def _data(tmp_path):
    tok = byte_bpe_tokenizer()
    tok.save(str(tmp_path / "tokenizer.json"))
    text = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40
    ids = np.array(tok.encode(text).ids + [1], dtype=np.uint16)
    (tmp_path / "tokens").mkdir()
    ids.tofile(tmp_path / "tokens" / "train.bin")
    ids.tofile(tmp_path / "tokens" / "val.bin")
    return ["--data", str(tmp_path / "tokens"), "--tokenizer", str(tmp_path / "tokenizer.json"), "--size", "tiny",
            "--seq-len", "32", "--batch-size", "4", "--warmup", "2", "--eval-every", "3", "--eval-batches", "1"]


def test_resume_is_exact(tmp_path):
    base = _data(tmp_path)
    straight = Trainer(parse(base + ["--out", str(tmp_path / "a"), "--max-steps", "6"]))
    straight.run()
    first = Trainer(parse(base + ["--out", str(tmp_path / "b"), "--max-steps", "6"]))
    for _ in range(3):
        first.train_step()
    first.save()
    resumed = Trainer(parse(base + ["--out", str(tmp_path / "b"), "--max-steps", "6"]))
    assert resumed.step == 3
    resumed.run()
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
    assert (tmp_path / "a" / "loss_curve.png").is_file()


def test_export_writes_a_loadable_checkpoint(tmp_path):
    base = _data(tmp_path)
    Trainer(parse(base + ["--out", str(tmp_path / "r"), "--max-steps", "3", "--export", str(tmp_path / "ex")])).run()
    from engine import Engine, InfillRequest

    eng = Engine.from_pretrained(tmp_path / "ex")
    cfg = json.loads((tmp_path / "ex" / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["dlsp_training"]["step"] == 3
    assert eng.infill(InfillRequest(prefix="def f(x):\n", hole_tokens=4, max_new_tokens=4)).forward_passes >= 1
    cfg["dlsp_sampling"] = {"min_per_step": 2}
    (tmp_path / "ex" / "config.json").write_text(json.dumps(cfg))
    Trainer(parse(base + ["--out", str(tmp_path / "r2"), "--max-steps", "3", "--export", str(tmp_path / "ex")])).run()
    assert json.loads((tmp_path / "ex" / "config.json").read_text())["dlsp_sampling"] == {"min_per_step": 2}


def test_warm_start_from_an_exported_directory_carries_weights_and_hours(tmp_path):
    base = _data(tmp_path)
    first = Trainer(parse(base + ["--out", str(tmp_path / "r"), "--max-steps", "3", "--export", str(tmp_path / "ex")]))
    first.run()
    cfg = json.loads((tmp_path / "ex" / "config.json").read_text())["dlsp_training"]
    warm = Trainer(parse(base + ["--out", str(tmp_path / "w"), "--max-steps", "1", "--init-from", str(tmp_path / "ex")]))
    assert warm.step == 0  # a new run, not a resume
    assert warm.prior["tokens"] == cfg["tokens_seen"] == 3 * 4 * 32
    assert warm.prior["seconds"] == pytest.approx(3600 * cfg["train_hours"])
    for (n, p), (_, q) in zip(first.model.named_parameters(), warm.model.named_parameters()):
        assert torch.allclose(p.detach(), q.detach(), rtol=1e-3, atol=1e-4), n  # fp16 on disk
    with pytest.raises(SystemExit, match="another model shape"):
        Trainer(parse(base + ["--out", str(tmp_path / "x"), "--size", "small", "--init-from", str(tmp_path / "ex")]))


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    base = _data(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "engine.training.train", *base, "--out", str(tmp_path / "ddp"), "--max-steps", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert st["step"] == 4 and st["tokens_seen"] == 4 * 4 * 32 * 2  # both ranks counted


def test_mask_row_needs_the_pretrained_base(tmp_path):
    """`--mask-row` trains a row of the pretrained base's embedding: a model trained from scratch
    trains its whole embedding already, and the flag says so instead of being ignored."""
    base = _data(tmp_path)
    assert parse(base).mask_row is False
    with pytest.raises(SystemExit, match="--mask-row needs --base"):
        Trainer(parse(base + ["--out", str(tmp_path / "r"), "--mask-row"]))
