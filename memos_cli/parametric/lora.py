"""Training a LoRA adapter on the last transformer block, in numpy, with exact gradients.

An adapter here changes only the last block: its attention output
projection and its feed-forward matrices. Everything before that block is
the untouched model, so its hidden states can be read once per example from
llama.cpp (``models.hidden.Capture``: the block's input ``l_out-{L-1}`` and
its attention heads ``kqv_out-L``) and the block's remaining computation
(projection, norms, feed-forward, output norm, output matrix) is done here,
forward and backward, for as many steps as training needs. The attention
itself never has to be differentiated: nothing trained comes before it.

The output matrix has a row per vocabulary token (262,144 for Gemma 3);
scoring every row at every step would cost more than everything else
together, so the softmax runs over a *candidate* vocabulary: the tokens the
adapter must produce and the base model's most likely tokens at every
trained position. Tokens outside it had negligible probability before
training and are not pushed up by it; the adapter's answers are checked
afterwards with llama.cpp itself on the whole vocabulary.

Supported architecture: gemma3 (the default chat model), whose block is
pre- and post-normed with RMSNorm and a GELU-gated feed-forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from memos_cli.errors import ModelError, UsageError
from memos_cli.models.weights import Weights

SUPPORTED_ARCHS = ("gemma3",)
TARGETS = ("attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class LoraOptions:
    rank: int = 8
    alpha: float = 16.0
    steps: int = 300
    lr: float = 3e-3
    seed: int = 0
    batch: int = 192  # rows of learning examples per step
    retain_weight: float = 1.0
    targets: tuple[str, ...] = TARGETS
    variants: int = 3  # rephrasings of each question learned besides it (``learn.rephrasings``)
    general: int = 40  # how many of the general questions (``retain``) keep their answers while learning

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 64:
            raise UsageError(f"bad --rank {self.rank}: use a whole number from 1 to 64")
        if not 1 <= self.steps <= 100_000:
            raise UsageError(f"bad --steps {self.steps}: use a whole number from 1 to 100000")
        if not 0 < self.lr <= 1:
            raise UsageError(f"bad learning rate {self.lr}: use a number above 0, at most 1")
        if not 0 <= self.variants <= 5:
            raise UsageError(f"bad --variants {self.variants}: use a whole number from 0 to 5")
        if not 0 <= self.general <= 40:
            raise UsageError(f"bad --general {self.general}: use a whole number from 0 to 40")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise UsageError(f"bad --targets {','.join(self.targets)}: choose from {', '.join(TARGETS)}")

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "steps": self.steps, "lr": self.lr, "seed": self.seed,
                "batch": self.batch, "retain_weight": self.retain_weight, "targets": list(self.targets),
                "general": self.general, "variants": self.variants}


class Block:
    """The last block's frozen weights, and its forward and backward passes with an adapter."""

    def __init__(self, weights: Weights) -> None:
        shape = weights.shape
        if shape.arch not in SUPPORTED_ARCHS:
            raise ModelError(f"learning adapters supports {', '.join(SUPPORTED_ARCHS)} models; this one is "
                             f"{shape.arch}")
        self.shape = shape
        self.layer = last = shape.n_layer - 1
        self.eps = shape.eps
        self.W = {name: weights.tensor(f"blk.{last}.{name}.weight") for name in TARGETS}
        self.norm_post_attn = weights.tensor(f"blk.{last}.post_attention_norm.weight")
        self.norm_ffn = weights.tensor(f"blk.{last}.ffn_norm.weight")
        self.norm_post_ffn = weights.tensor(f"blk.{last}.post_ffw_norm.weight")
        self.norm_out = weights.tensor("output_norm.weight")
        self.n_heads_width = self.W["attn_output"].shape[1]
        self.names = {f"l_out-{last - 1}": shape.n_embd, f"kqv_out-{last}": self.n_heads_width}

    def tensor_name(self, target: str) -> str:
        return f"blk.{self.layer}.{target}.weight"

    # ---- forward and backward ----------------------------------------------------------

    def _rms(self, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps)
        return x * r * w, r

    @staticmethod
    def _rms_back(dy: np.ndarray, x: np.ndarray, r: np.ndarray, w: np.ndarray) -> np.ndarray:
        g = dy * w
        return r * g - x * (r ** 3) * (g * x).mean(-1, keepdims=True)

    def forward(self, heads: np.ndarray, resid: np.ndarray, lora: dict[str, tuple[np.ndarray, np.ndarray]],
                scale: float, out_rows: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Logits over ``out_rows`` (the candidate tokens' output rows), and what backward needs."""
        cache: dict[str, Any] = {}

        def linear(name: str, x: np.ndarray) -> np.ndarray:
            y = x @ self.W[name].T
            if name in lora:
                a, b = lora[name]
                xa = x @ a.T
                cache[name] = (x, xa)
                y = y + scale * (xa @ b.T)
            return y

        o = linear("attn_output", heads)
        o_n, r1 = self._rms(o, self.norm_post_attn)
        sa = o_n + resid
        h, r2 = self._rms(sa, self.norm_ffn)
        g = linear("ffn_gate", h)
        u = linear("ffn_up", h)
        t = np.tanh(0.7978845608 * (g + 0.044715 * g ** 3))
        act = 0.5 * g * (1.0 + t)
        m = act * u
        d = linear("ffn_down", m)
        f, r3 = self._rms(d, self.norm_post_ffn)
        out = f + sa
        y, r4 = self._rms(out, self.norm_out)
        logits = y @ out_rows.T
        cache.update(o=o, r1=r1, sa=sa, r2=r2, g=g, t=t, act=act, u=u, d=d, r3=r3, out=out, r4=r4, y=y)
        return logits, cache

    def backward(self, dlogits: np.ndarray, cache: dict[str, Any], lora: dict[str, tuple[np.ndarray, np.ndarray]],
                 scale: float, out_rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Gradients of the adapter's (A, B) pairs."""
        grads: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def linear_back(name: str, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
            dx = dy @ self.W[name] if need_dx else None
            if name in lora:
                a, b = lora[name]
                x, xa = cache[name]
                dyb = dy @ b  # (rows, r)
                grads[name] = (scale * (dyb.T @ x), scale * (dy.T @ xa))
                if need_dx:
                    dx = dx + scale * (dyb @ a)
            return dx

        c = cache
        dy = dlogits @ out_rows
        dout = self._rms_back(dy, c["out"], c["r4"], self.norm_out)
        dsa = dout.copy()
        dd = self._rms_back(dout, c["d"], c["r3"], self.norm_post_ffn)
        dm = linear_back("ffn_down", dd, True)
        assert dm is not None
        g, t = c["g"], c["t"]
        du = dm * c["act"]
        dact = dm * c["u"]
        dg = dact * (0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * 0.7978845608 * (1.0 + 3 * 0.044715 * g * g))
        needs_h = "attn_output" in lora
        dh = None
        for name, grad in (("ffn_gate", dg), ("ffn_up", du)):
            part = linear_back(name, grad, needs_h)
            if part is not None:
                dh = part if dh is None else dh + part
        if needs_h and dh is not None:
            dsa = dsa + self._rms_back(dh, c["sa"], c["r2"], self.norm_ffn)
            do = self._rms_back(dsa, c["o"], c["r1"], self.norm_post_attn)
            linear_back("attn_output", do, False)
        return grads


@dataclass
class Rows:
    """Training rows: each one position of an example, its captured hidden states, and what it
    should predict (``target``, an index into the candidates) or, for a retained row, the base
    model's distribution over the candidates (``base``)."""

    heads: np.ndarray  # (n, width of the attention heads)
    resid: np.ndarray  # (n, n_embd)
    target: np.ndarray  # (n,) int: candidate index; -1 for a retained row
    base: np.ndarray  # (n, candidates) float32: the base model's probabilities (its likeliest tokens only)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


Lora = dict[str, tuple[np.ndarray, np.ndarray]]


def train(block: Block, rows: Rows, out_rows: np.ndarray, options: LoraOptions,
          progress: Callable[[int, int, float], None] | None = None, *, init: Lora | None = None,
          steps: int | None = None, seed: int | None = None) -> tuple[Lora, float]:
    """Adam on the adapter, from ``init`` or from a fresh one (A random, B zero, as PEFT does);
    returns the (A, B) pairs (numpy shapes (r, n_in), (n_out, r)) and the last step's loss on the
    learning rows."""
    rng = np.random.default_rng(options.seed if seed is None else seed)
    scale = options.alpha / options.rank
    lora: Lora = {}
    for name in options.targets:
        n_out, n_in = block.W[name].shape
        a = (rng.standard_normal((options.rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
        lora[name] = (a, np.zeros((n_out, options.rank), dtype=np.float32))
    if init is not None:
        lora = {name: (a.copy(), b.copy()) for name, (a, b) in init.items()}
    total = options.steps if steps is None else steps
    moments = {name: [np.zeros_like(a), np.zeros_like(b), np.zeros_like(a), np.zeros_like(b)]
               for name, (a, b) in lora.items()}
    learn = np.flatnonzero(rows.target >= 0)
    retain = np.flatnonzero(rows.target < 0)
    if learn.size == 0:
        raise UsageError("nothing to learn: the selected units gave no training rows")
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    loss = float("nan")
    n_retain = min(retain.size, max(1, options.batch // 2)) if retain.size else 0
    for step in range(1, total + 1):
        pick = learn if learn.size <= options.batch else rng.choice(learn, options.batch, replace=False)
        if n_retain:
            pick = np.concatenate([pick, rng.choice(retain, n_retain, replace=False)])
        logits, cache = block.forward(rows.heads[pick], rows.resid[pick], lora, scale, out_rows)
        logp = _log_softmax(logits)
        p = np.exp(logp)
        target = rows.target[pick]
        is_learn = target >= 0
        dz = np.zeros_like(logits)
        n_learn = max(1, int(is_learn.sum()))
        li = np.flatnonzero(is_learn)
        dz[li] = p[li]
        dz[li, target[li]] -= 1.0
        dz[li] /= n_learn
        loss = float(-logp[li, target[li]].mean())
        ri = np.flatnonzero(~is_learn)
        if ri.size:
            dz[ri] = options.retain_weight * (p[ri] - rows.base[pick[ri]]) / ri.size
        grads = block.backward(dz.astype(np.float32), cache, lora, scale, out_rows)
        lr = options.lr * min(1.0, step / 20)  # a short warm-up
        for name, (ga, gb) in grads.items():
            a, b = lora[name]
            ma, mb, va, vb = moments[name]
            for param, grad, m, v in ((a, ga, ma, va), (b, gb, mb, vb)):
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad * grad
                param -= (lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)).astype(np.float32)
        if progress is not None:
            progress(step, total, loss)
    return lora, loss
