"""`dlsp train`: masked-diffusion training, single process or under torchrun (DDP).

AdamW, warmup + cosine, gradient clipping, a tqdm bar with loss and tokens/s, checkpoints every
few minutes that resume exactly (model, optimizer, RNG, data position = sampler RNG state),
a loss curve PNG, and export of the best model (by validation loss) as a shippable checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from engine.checkpoint import load_model, save_checkpoint
from engine.config import CONFIGS, FAMILIES, ModelArgs
from engine.model import Transformer
from engine.tokenizer import Tokenizer
from engine.training import adapt
from engine.training.data import PackedTokens
from engine.training.objective import DiffusionLoss, ObjectiveConfig, corrupt
from engine.training.plot import plot_curve

# --mask-row: the row's learning rate over the LoRA factors'. A 576-wide row (per-coordinate
# spread of the base's embeddings ~0.14) barely moves at a LoRA rate of 2e-4 over a few hundred steps
MASK_ROW_LR = 10.0


def _weights(text: str) -> tuple[float, float, float]:
    try:
        w = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 2,1,1, got {text!r}") from None
    if len(w) != 3 or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise argparse.ArgumentTypeError(f"expected three weights >= 0, not all 0, got {text!r}")
    return w  # type: ignore[return-value]


def _finite(text: str, zero_ok: bool) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(x) and (x >= 0 if zero_ok else x > 0)):
        raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if zero_ok else '>'} 0, got {text!r}")
    return x


def _positive(text: str) -> float:
    return _finite(text, zero_ok=False)


def _nonnegative(text: str) -> float:
    return _finite(text, zero_ok=True)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlsp train", description=__doc__)
    p.add_argument("--data", default="data/tokens", help="folder with train.bin, val.bin")
    p.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    p.add_argument("--out", default="runs/default", help="run folder (checkpoints, logs, curve)")
    p.add_argument("--export", default=None, help="write the best model here as a checkpoint dir")
    p.add_argument("--size", default="small", choices=sorted(CONFIGS))
    p.add_argument("--family", default="llada", choices=["llada", "dream"])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--time-budget-min", type=float, default=None, help="stop (and save) after this many minutes")
    p.add_argument("--schedule", default="steps", choices=["steps", "time"])
    p.add_argument("--ckpt-every-min", type=float, default=5.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--fim-rate", type=float, default=0.6)
    p.add_argument("--region", default="sequence", choices=["sequence", "windows"],
                   help="masked region of non-FIM rows: the whole sequence, or random windows")
    p.add_argument("--t-max-start", type=float, default=1.0,
                   help="curriculum: the largest masking rate starts here and ramps linearly to 1")
    p.add_argument("--t-ramp", type=float, default=0.5,
                   help="fraction of the run (time budget or max steps) over which the masking rate ramps up")
    p.add_argument("--loss-weighting", default="flat", choices=["flat", "elbo"],
                   help="flat: mean CE over masked tokens; elbo: the 1/t-weighted bound (see objective.py)")
    p.add_argument("--init-from", default=None,
                   help="warm start: model weights (and their training hours) from another run's last.pt or an exported model directory")
    p.add_argument("--base", default=None, choices=["smollm2"],
                   help="adapt the pinned pretrained base (LoRA on the upper layers) instead of training from scratch")
    p.add_argument("--causal-layers", type=int, default=20, help="with --base: lower layers kept causal (and frozen below --lora-from)")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-from", type=int, default=None,
                   help="with --base: LoRA from this layer (default: --causal-layers); the causal layers from "
                        "here on train too, at --lora-rank-lower, and stay causal")
    p.add_argument("--lora-rank-lower", type=int, default=None,
                   help="with --lora-from: the rank of the causal layers' factors (default: --lora-rank)")
    p.add_argument("--open-steps", type=int, default=300,
                   help="with --base: steps over which attention ahead of the query opens in the upper layers")
    p.add_argument("--holes-per-row", type=int, default=1, help="FIM rows: independent middles per row")
    p.add_argument("--max-pad", type=int, default=24, help="FIM rows: EOS pads after a middle, uniform in [0, N]")
    p.add_argument("--ltr-rate", type=float, default=0.0,
                   help="FIM holes masked as a left-to-right decode leaves them (a decoded head, a masked tail)")
    p.add_argument("--kind-weights", type=_weights, default=(1.0, 1.0, 1.0),
                   help="FIM middles: relative weights of one line, 2-8 lines, a random span (e.g. 2,1,1)")
    p.add_argument("--frontier-weight", type=_positive, default=1.0,
                   help="left-to-right holes: loss weight of the first masked slot relative to the rest")
    p.add_argument("--mask-row", action="store_true",
                   help="with --base: also train the mask token's input embedding row (engine.adapter.MaskRowEmbedding)")
    p.add_argument("--base-mix", type=_nonnegative, default=0.0,
                   help="with --base: left-to-right holes' first masked slot is trained through the product "
                        "with the base's reading at this weight (the decode's base_weight); 0 = off")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def lr_at(step: int, a: argparse.Namespace, seconds: float = 0.0) -> float:
    """Linear warmup, then cosine to `min_lr_ratio`; over steps, or over the time budget when
    `--schedule time` (so a run cut by wall time still ends with a decayed learning rate)."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    if a.schedule == "time" and a.time_budget_min:
        prog = min(1.0, seconds / (a.time_budget_min * 60))
    else:
        prog = min(1.0, (step - a.warmup) / max(1, a.max_steps - a.warmup))
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


def progress(step: int, a: argparse.Namespace, seconds: float = 0.0) -> float:
    """Fraction of the run done: of the time budget with `--schedule time`, else of max steps."""
    if a.schedule == "time" and a.time_budget_min:
        return min(1.0, seconds / (a.time_budget_min * 60))
    return min(1.0, step / max(1, a.max_steps))


def t_max_at(step: int, a: argparse.Namespace, seconds: float = 0.0) -> float:
    """The curriculum's largest masking rate: `--t-max-start` ramping to 1 over `--t-ramp` of the run."""
    if a.t_max_start >= 1.0 or a.t_ramp <= 0:
        return 1.0
    return min(1.0, a.t_max_start + (1 - a.t_max_start) * progress(step, a, seconds) / a.t_ramp)


def model_args(a: argparse.Namespace, tok: Tokenizer) -> ModelArgs:
    ids = {name: tok.token_to_id(t) for name, t in (("mask", "<|mask|>"), ("eos", "<|eos|>"), ("bos", "<|bos|>"))}
    if None in ids.values():
        raise SystemExit(f"tokenizer {a.tokenizer} lacks the special tokens <|mask|>, <|eos|>, <|bos|>")
    return ModelArgs(family=a.family, vocab_size=tok.vocab_size, mask_id=ids["mask"], eos_id=ids["eos"],
                     pad_id=ids["eos"], bos_id=ids["bos"], qkv_bias=a.family == "dream",
                     **{**CONFIGS[a.size], "max_positions": max(CONFIGS[a.size]["max_positions"], a.seq_len)})


class Trainer:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.ddp:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.ddp else 0
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
        if a.threads:
            torch.set_num_threads(a.threads)
        torch.manual_seed(a.seed)
        self.adapter = None
        if a.mask_row and not a.base:
            raise SystemExit("--mask-row needs --base: it trains a row of the pretrained base's embedding")
        if a.base:
            self.model, self.args, self.adapter, trainable, tok_path = adapt.build(a, Path(a.out))
            a.tokenizer = str(tok_path)
            self.tok = Tokenizer.from_file(tok_path)
            self.model = self.model.to(self.device)
        else:
            self.tok = Tokenizer.from_file(a.tokenizer)
            self.args = model_args(a, self.tok)
            self.model = Transformer(self.args).to(self.device)
            self._init_weights()
            trainable = list(self.model.parameters())
        self.loss_mod = DiffusionLoss(self.model, shifted=FAMILIES[self.args.family].shifted)
        self.base_prior = None
        if a.base_mix > 0:
            if not a.base:
                raise SystemExit("--base-mix needs --base: the prior is the pretrained base")
            from engine.gguf_import import read_base
            from engine.training.prior import BasePrior

            ar = read_base()
            self.base_prior = BasePrior(ar.build(causal_layers=ar.args.n_layers, max_positions=self.args.max_positions)
                                        .to(self.device), a.base_mix)
        self.loss_ddp = torch.nn.parallel.DistributedDataParallel(self.loss_mod) if self.ddp else self.loss_mod
        row = self.model.tok_emb.row if self.adapter is not None and self.adapter.mask_row else None
        decay = [p for p in trainable if p.dim() >= 2]
        no_decay = [p for p in trainable if p.dim() < 2 and p is not row]
        groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if row is not None:  # one vector among millions of LoRA weights: it moves at its own pace
            groups.append({"params": [row], "weight_decay": 0.0, "lr_mult": MASK_ROW_LR})
        self.opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95))
        self.train_data = PackedTokens(Path(a.data) / "train.bin")
        self.val = PackedTokens(Path(a.data) / "val.bin").fixed_batches(
            a.eval_batches, a.batch_size, a.seq_len, self.args.lead_id)
        self.is_nl = torch.tensor(self.tok.newline_ids(self.args.vocab_size), dtype=torch.bool)  # line boundaries
        self.lead = self.args.lead_id
        self.obj = ObjectiveConfig(fim_rate=a.fim_rate, weighting=a.loss_weighting, region=a.region,
                                   holes_per_row=a.holes_per_row, max_pad=a.max_pad,
                                   ltr_rate=a.ltr_rate, kind_weights=a.kind_weights,
                                   frontier_weight=a.frontier_weight)
        # validation reads every masked token alike, so its loss compares across frontier weights
        self.val_obj = replace(self.obj, frontier_weight=1.0)
        self.g = torch.Generator().manual_seed(a.seed * 1000 + self.rank)
        self.step, self.best_val, self.tokens_seen, self.train_seconds = 0, float("inf"), 0, 0.0
        self.prior = {"seconds": 0.0, "tokens": 0}  # training the warm start had before this run
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if not self._resume() and a.init_from:
            self._warm_start(Path(a.init_from))

    def _init_weights(self) -> None:
        self.model.init_weights()

    def _state(self) -> dict:
        model = self.model.state_dict() if self.adapter is None else adapt.state(self.model, self.adapter)
        return {"model": model, "opt": self.opt.state_dict(), "step": self.step,
                "best_val": self.best_val, "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                "data_rng": self.g.get_state(), "torch_rng": torch.get_rng_state(),
                "model_args": json.dumps(asdict(self.args)), "prior": json.dumps(self.prior)}

    def _warm_start(self, path: Path) -> None:
        """From a run's `last.pt`, or from an exported checkpoint directory (such as the shipped
        model: weights are fp16 on disk, training totals come from its config's `dlsp_training`)."""
        if self.adapter is not None:  # an adapter directory
            info = adapt.warm_start(self.model, self.adapter, path)
            self.prior = {"seconds": 3600.0 * float(info.get("train_hours", 0.0)),
                          "tokens": int(info.get("tokens_seen", 0))}
        elif path.is_dir():
            model, args = load_model(path)
            if replace(args, max_positions=self.args.max_positions) != self.args:
                raise SystemExit(f"{path}: another model shape; cannot warm start from it")
            self.model.load_state_dict(model.state_dict())
            info = json.loads((path / "config.json").read_text(encoding="utf-8")).get("dlsp_training", {})
            self.prior = {"seconds": 3600.0 * float(info.get("train_hours", 0.0)),
                          "tokens": int(info.get("tokens_seen", 0))}
        else:
            st = torch.load(path, map_location="cpu", weights_only=True)
            if json.loads(st["model_args"]) != asdict(self.args):
                raise SystemExit(f"{path}: another model shape; cannot warm start from it")
            self.model.load_state_dict(st["model"])
            prior = json.loads(st.get("prior", "{}")) or {"seconds": 0.0, "tokens": 0}
            self.prior = {"seconds": prior["seconds"] + float(st["train_seconds"]),
                          "tokens": prior["tokens"] + int(st["tokens_seen"])}
        if self.rank == 0:
            print(f"warm start from {path} ({self.prior['seconds'] / 3600:.2f} h of earlier training)", flush=True)

    def _resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.is_file():
            return False
        st = torch.load(path, map_location="cpu", weights_only=True)
        if json.loads(st["model_args"]) != asdict(self.args):
            raise SystemExit(f"{path}: the run was started with another model shape; use a new --out")
        if self.adapter is not None:
            adapt.load_adapter_tensors(self.model, self.adapter, st["model"])
        else:
            self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.step, self.best_val = int(st["step"]), float(st["best_val"])
        self.tokens_seen, self.train_seconds = int(st["tokens_seen"]), float(st["train_seconds"])
        self.g.set_state(st["data_rng"])
        torch.set_rng_state(st["torch_rng"])
        self.prior = json.loads(st.get("prior", "{}")) or self.prior
        if self.rank == 0:
            print(f"resumed from {path} at step {self.step}", flush=True)
        return True

    def save(self) -> None:
        if self.rank != 0:
            return
        tmp = self.out / "last.pt.tmp"
        torch.save(self._state(), tmp)
        os.replace(tmp, self.out / "last.pt")
        plot_curve(self.out / "log.jsonl", self.out / "loss_curve.png")

    @torch.no_grad()
    def _corrupt(self, batch: torch.Tensor, obj: ObjectiveConfig, g: torch.Generator, t_max: float = 1.0):
        """`corrupt`, and with `--base-mix` the base's prior at the left-to-right frontiers (else
        None): noisy, clean, mask, weight, mix."""
        frontiers: list[tuple[int, int, int]] | None = [] if self.base_prior is not None else None
        noisy, clean, mask, w = corrupt(batch, self.args, self.is_nl, obj, g, t_max=t_max, frontiers=frontiers)
        mix = self.base_prior(clean, frontiers) if self.base_prior is not None and frontiers else None
        return noisy, clean, mask, w, mix

    def evaluate(self) -> dict[str, float]:
        """Validation on fixed batches and a fixed corruption: the objective being trained, and the
        masked-token CE with 15% of tokens masked (how much the model uses its context)."""
        self.model.eval()
        g = torch.Generator().manual_seed(4321)  # the same corruption every evaluation
        total, ce15 = 0.0, 0.0
        for batch in self.val:
            noisy, clean, mask, w, mix = self._corrupt(batch, self.val_obj, g)
            total += float(self.loss_mod(noisy.to(self.device), clean.to(self.device), mask.to(self.device),
                                         w.to(self.device), None, mix)[0])
            m15 = torch.rand(batch.shape, generator=g) < 0.15
            m15[:, 0] = False
            noisy = torch.where(m15, torch.full_like(batch, self.args.mask_id), batch)
            ce15 += float(self.loss_mod(noisy.to(self.device), batch.to(self.device), m15.to(self.device),
                                        m15.float().to(self.device) * batch.shape[0] / m15.sum())[0])
        self.model.train()
        return {"val_loss": total / len(self.val), "val_ce15": ce15 / len(self.val)}

    def export(self, val: dict[str, float]) -> None:
        if self.rank != 0 or not self.a.export:
            return
        meta = {"dlsp_training": {"step": self.step, "tokens_seen": self.tokens_seen + self.prior["tokens"],
                                  "val_loss": round(val["val_loss"], 4), "val_ce15": round(val["val_ce15"], 4),
                                  "train_hours": round((self.train_seconds + self.prior["seconds"]) / 3600, 3),
                                  "seq_len": self.a.seq_len, "size": self.a.size,
                                  "loss_weighting": self.a.loss_weighting, "region": self.a.region,
                                  "fim_rate": self.a.fim_rate, "t_max_start": self.a.t_max_start,
                                  "t_ramp": self.a.t_ramp,
                                  "warm_start": Path(self.a.init_from).name if self.a.init_from else None}}
        # positions beyond the trained sequence length are out of distribution for RoPE: the engine
        # clips its context to what the model saw
        try:  # decoding defaults chosen by evaluation stay with the exported weights
            old = json.loads((Path(self.a.export) / "config.json").read_text(encoding="utf-8"))
            if isinstance(old.get("dlsp_sampling"), dict):
                meta["dlsp_sampling"] = old["dlsp_sampling"]
        except (OSError, ValueError, AttributeError):
            pass
        if self.adapter is not None:
            meta["dlsp_training"].update(base="smollm2", causal_layers=self.a.causal_layers,
                                         lora_rank=self.a.lora_rank, open_steps=self.a.open_steps,
                                         lora_from=self.adapter.first_layer,
                                         holes_per_row=self.a.holes_per_row, max_pad=self.a.max_pad,
                                         ltr_rate=self.a.ltr_rate, kind_weights=self.a.kind_weights,
                                         frontier_weight=self.a.frontier_weight, base_mix=self.a.base_mix,
                                         mask_row=self.a.mask_row)
            adapt.export(self.model, self.args, self.adapter, Path(self.a.export), Path(self.a.tokenizer), meta)
            return
        save_checkpoint(self.model, self.a.export, tokenizer_json=self.a.tokenizer, extra_config=meta,
                        max_positions=min(self.args.max_positions, self.a.seq_len))

    def log(self, rec: dict) -> None:
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    def train_step(self) -> tuple[float, float]:
        a = self.a
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, a, self.train_seconds) * group.get("lr_mult", 1.0)
        batch = self.train_data.batch(a.batch_size, a.seq_len, self.lead, self.g)
        noisy, clean, mask, w, mix = self._corrupt(batch, self.obj, self.g, t_max_at(self.step, a, self.train_seconds))
        open_frac = adapt.open_frac_at(self.step, a.open_steps) if self.adapter is not None else None
        loss, ce = self.loss_ddp(noisy.to(self.device), clean.to(self.device), mask.to(self.device), w.to(self.device),
                                 open_frac, mix)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
        self.opt.step()
        self.step += 1
        self.tokens_seen += batch.numel() * (dist.get_world_size() if self.ddp else 1)
        return float(loss.detach()), float(ce)

    def run(self) -> None:
        a = self.a
        last_ckpt = time.time()
        bar = tqdm(total=a.max_steps, initial=self.step, disable=self.rank != 0, dynamic_ncols=True)
        tok_window, t_window = 0, time.time()
        while self.step < a.max_steps:
            t0 = time.time()
            loss, ce = self.train_step()
            self.train_seconds += time.time() - t0
            tok_window += a.batch_size * a.seq_len
            if self.step % 10 == 0:
                tps = tok_window / max(1e-6, time.time() - t_window)
                tok_window, t_window = 0, time.time()
                bar.set_postfix(loss=f"{loss:.3f}", ce=f"{ce:.3f}", tok_s=f"{tps:.0f}")
                self.log({"step": self.step, "loss": loss, "ce": ce, "lr": lr_at(self.step, a, self.train_seconds),
                          "tok_s": tps, "tokens": self.tokens_seen + self.prior["tokens"],
                          "hours": (self.train_seconds + self.prior["seconds"]) / 3600})
            bar.update(1)
            if self.step % a.eval_every == 0 or self.step == a.max_steps:
                val = self.evaluate()
                self.log({"step": self.step, **val, "tokens": self.tokens_seen + self.prior["tokens"],
                          "hours": (self.train_seconds + self.prior["seconds"]) / 3600})
                if val["val_loss"] < self.best_val:
                    self.best_val = val["val_loss"]
                    self.export(val)
                bar.write(f"step {self.step} val {val['val_loss']:.4f} ce15 {val['val_ce15']:.4f} "
                          f"best {self.best_val:.4f}")
            out_of_time = a.time_budget_min is not None and self.train_seconds > a.time_budget_min * 60
            if time.time() - last_ckpt > a.ckpt_every_min * 60 or out_of_time:
                self.save()
                last_ckpt = time.time()
            if out_of_time:
                break
        self.save()
        bar.close()
        if self.ddp:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    a = parse(argv or [])
    Trainer(a).run()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
