"""k-th order Markov language model over A/C/G/T: the classical baseline every DNA LM must beat.

Owns fitting (counts of every order 0..k), order selection on validation bits/base, exact likelihood
(`score`, per-window `nats_per_window`, per-position `log_probs`), sampling, the model directory
(`config.json` with `model_type: "markov"` + counts in `model.safetensors`), and `markov_yardstick`, the
number every pretraining run prints beside its own held-out bits/base. `MarkovLM` is one of the three language
models behind `likelihood`, `evaluate-samples` and `sample` (with `diffusion.mdlm.MDLM` and `baselines.ar.AR`).

Smoothing is **interpolated Witten-Bell** (Witten & Bell 1991; the PPM-C escape estimate used by
classical DNA compressors): with c a context of length j, C(c, b) the count of base b after c,
C(c) = sum_b C(c, b) and T(c) the number of distinct bases seen after c,

    P_j(b | c) = (C(c, b) + T(c) * P_{j-1}(b | c')) / (C(c) + T(c)),    c' = c minus its oldest base,

bottoming out in the uniform P_{-1}(b) = 1/4, and P_j = P_{j-1} for a context never seen. It has no
tuning knob, gives every base a non-zero probability in every context, and is a proper distribution.

Tokens are the tokenizer ids (A=7, C=8, G=9, T=10). Anything else (N, PAD, ...) is never scored and
breaks the context: the base after an N is scored with the empty context, as at a record start, so the
score of a record is its exact likelihood under the model.

Counts are stored sparsely: for order j, the sorted int64 keys `context_code * 4 + base` (context
packed 2 bits per base, oldest base most significant) and their counts. That keeps memory proportional
to the training data for large k instead of 4^(k+1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..diffusion.sampling import RowGenerators
from ..errors import InputError
from ..io.writers import atomic_path
from ..kmers import base_codes, iter_kmer_codes, joined_codes
from ..tokenizer import A_ID, MASK_ID, decode_dna, encode_dna
from ..units import LN2

MODEL_TYPE = "markov"
SMOOTHING = "interpolated Witten-Bell"
MAX_ORDER = 30  # 2 bits per base of context + 2 for the base must fit in int64
_DENSE_LIMIT = 1 << 22  # orders with at most this many (context, base) cells are counted with bincount


def _as_ids(seq) -> np.ndarray:
    if isinstance(seq, (str, bytes)):
        return encode_dna(seq)  # validated: an invalid character is an InputError, never a silent N
    return np.asarray(seq)


def _concat_records(records: Iterable) -> np.ndarray:
    """Codes of all records joined with a -1 separator, so no context crosses a record boundary."""
    codes = joined_codes([_as_ids(rec) for rec in records])
    if codes.size == 0:
        raise InputError("no sequences to fit the Markov model on (empty input)")
    return codes


def _contexts(codes: np.ndarray, max_order: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For j = 0..max_order: (j, packed code of the j bases before each position, whether those j bases exist
    and are all A/C/G/T). The context of position i is the j-mer starting at i - j (`dna_mdlm.kmers` packing:
    oldest base most significant)."""
    n = codes.size
    yield 0, np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
    if max_order == 0:
        return
    for j, packed, valid in iter_kmer_codes(codes, max_order):
        ctx = np.zeros(n, dtype=np.int64)
        ok = np.zeros(n, dtype=bool)
        m = max(0, min(packed.size, n - j))
        ctx[j:j + m] = packed[:m].astype(np.int64)
        ok[j:j + m] = valid[:m]
        yield j, ctx, ok


class MarkovLM:
    """Interpolated Witten-Bell k-th order Markov model over A/C/G/T (see module docstring)."""

    kind = "markov"
    upper_bound = False  # exact likelihood
    window = None  # any length: records are scored whole (a neural model's window is an int)

    def __init__(self, order: int, keys: Sequence[np.ndarray], counts: Sequence[np.ndarray],
                 validation_bits_per_base: dict | None = None, n_train_bases: int = 0):
        if not 0 <= order <= MAX_ORDER:
            raise InputError(f"Markov order must be in 0..{MAX_ORDER}, got {order}")
        if len(keys) != order + 1 or len(counts) != order + 1:
            raise InputError(f"an order-{order} Markov model needs {order + 1} count tables, got {len(keys)}")
        self.order = int(order)
        self.keys = [np.asarray(k, dtype=np.int64) for k in keys]
        self.counts = [np.asarray(c, dtype=np.int64) for c in counts]
        self.validation_bits_per_base = dict(validation_bits_per_base or {})
        self.n_train_bases = int(n_train_bases)
        self._build_context_tables()

    # --- fitting ----------------------------------------------------------------------------------
    @staticmethod
    def count_tables(records: Iterable, max_order: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """Sparse (keys, counts) for orders 0..max_order over the records, and the number of bases."""
        if not 0 <= max_order <= MAX_ORDER:
            raise InputError(f"Markov order must be in 0..{MAX_ORDER}, got {max_order}")
        codes = _concat_records(records)
        is_base = codes >= 0
        base = codes.astype(np.int64)
        keys, counts = [], []
        for j, ctx, ctx_ok in _contexts(codes, max_order):
            use = is_base & ctx_ok
            cells = ctx[use] * 4 + base[use]
            if 4 ** (j + 1) <= _DENSE_LIMIT:
                dense = np.bincount(cells, minlength=4 ** (j + 1))
                nz = np.flatnonzero(dense)
                keys.append(nz.astype(np.int64))
                counts.append(dense[nz].astype(np.int64))
            else:
                k, c = np.unique(cells, return_counts=True)
                keys.append(k.astype(np.int64))
                counts.append(c.astype(np.int64))
        return keys, counts, int(is_base.sum())

    @classmethod
    def fit(cls, sequences, k: int | None = None, val=None, k_range: Iterable[int] = range(0, 13)) -> MarkovLM:
        """Fit on DNA strings or token-id arrays. With k=None, pick the order in k_range that gives
        the lowest bits/base on `val` (required then); the per-order curve is kept in
        `validation_bits_per_base`."""
        records = list(sequences)
        if k is not None:
            keys, counts, n = cls.count_tables(records, int(k))
            curve = {}
            model = cls(int(k), keys, counts, n_train_bases=n)
            if val is not None:
                curve[int(k)] = model.bits_per_base(val)
            model.validation_bits_per_base = curve
            return model
        orders = sorted(int(o) for o in k_range)
        if not orders or orders[0] < 0:
            raise InputError(f"k_range must hold orders >= 0, got {orders}")
        if val is None:
            raise InputError("choosing the Markov order (k=None) needs validation sequences (val=...)")
        val = list(val)
        keys, counts, n = cls.count_tables(records, orders[-1])
        by_order = cls(orders[-1], keys, counts, n_train_bases=n).bits_per_base_by_order(val)
        curve = {order: by_order[order] for order in orders}
        best = min(curve, key=lambda o: (curve[o], o))
        return cls(best, keys[: best + 1], counts[: best + 1], validation_bits_per_base=curve, n_train_bases=n)

    def _build_context_tables(self) -> None:
        # Per context: total count C(c) and number of distinct following bases T(c).
        self.ctx_keys, self.ctx_totals, self.ctx_types = [], [], []
        for keys, counts in zip(self.keys, self.counts):
            ctx = keys >> 2
            uniq, start = np.unique(ctx, return_index=True)
            self.ctx_keys.append(uniq)
            self.ctx_totals.append(np.add.reduceat(counts, start) if counts.size else counts)
            self.ctx_types.append(np.diff(np.append(start, ctx.size)).astype(np.int64))

    # --- probabilities ----------------------------------------------------------------------------
    @staticmethod
    def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        if sorted_keys.size == 0:
            return np.zeros(query.shape, dtype=np.int64)
        pos = np.searchsorted(sorted_keys, query)
        pos_c = np.minimum(pos, sorted_keys.size - 1)
        return np.where(sorted_keys[pos_c] == query, values[pos_c], 0)

    def _interpolate(self, p: np.ndarray, order: int, ctx: np.ndarray, base: np.ndarray) -> np.ndarray:
        c_cb = self._lookup(self.keys[order], self.counts[order], ctx * 4 + base)
        c_c = self._lookup(self.ctx_keys[order], self.ctx_totals[order], ctx)
        t_c = self._lookup(self.ctx_keys[order], self.ctx_types[order], ctx)
        seen = c_c > 0
        return np.where(seen, (c_cb + t_c * p) / np.maximum(c_c + t_c, 1), p)

    def _levels(self, ids) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(j, probabilities of the order-j model, scored mask) for j = 0..order: the interpolation builds order j on
        order j-1, so one pass gives every lower-order model's probabilities too."""
        codes = base_codes(_as_ids(ids))
        is_base = codes >= 0
        base = np.maximum(codes, 0).astype(np.int64)
        p = np.full(codes.size, 0.25)
        for j, ctx, ctx_ok in _contexts(codes, self.order):
            use = is_base & ctx_ok
            p[use] = self._interpolate(p[use], j, ctx[use], base[use])
            yield j, p, is_base

    def log_probs(self, ids) -> np.ndarray:
        """Natural-log probability of every base given up to `order` previous bases; NaN where not scored."""
        for j, p, is_base in self._levels(ids):
            if j == self.order:
                out = np.full(p.size, np.nan)
                out[is_base] = np.log(p[is_base])
                return out
        raise AssertionError("unreachable")

    def bits_per_base_by_order(self, sequences) -> dict[int, float]:
        """{j: pooled bits per scored base of the order-j model} for j = 0..order, in one pass over `sequences`."""
        nats, n = np.zeros(self.order + 1), 0
        for rec in sequences:
            for j, p, is_base in self._levels(rec):
                nats[j] -= float(np.log(p[is_base]).sum())
            n += int(is_base.sum())
        if n == 0:
            raise InputError("no A/C/G/T base to score (all sequences empty or N)")
        return {j: float(nats[j] / n / LN2) for j in range(self.order + 1)}

    def score(self, ids) -> tuple[float, int]:
        """(total negative log-likelihood in nats, number of scored bases) of one record."""
        lp = self.log_probs(ids)
        scored = ~np.isnan(lp)
        return float(-lp[scored].sum()), int(scored.sum())

    def describe(self) -> str:
        return f"Markov LM (order {self.order}, {SMOOTHING}), exact"

    infills = False  # left to right: a prefix only

    def progress_total(self, length: int, settings) -> int:
        return length

    def infill(self, canvas: torch.Tensor, settings, generator=None, stats=None, progress=None) -> torch.Tensor:
        """Complete canvas (B, L), whose fixed bases form a prefix, with `sample`; the numpy seed is drawn from
        `generator`, so successive batches differ and a seed fixes them all."""
        if settings.temperature == 0 or settings.top_p < 1:
            raise InputError("a Markov model samples with --temperature > 0 and no --top-p")
        fixed = canvas[0][canvas[0] != MASK_ID].cpu().numpy()
        prefix = decode_dna(fixed) if fixed.size else None
        if isinstance(generator, RowGenerators):  # one numpy stream per sequence: independent of the batch
            seqs = [self.sample(1, canvas.shape[1], seed=int(torch.randint(0, 2**62, (1,), generator=g)),
                                temperature=settings.temperature, prefix=prefix)[0] for g in generator]
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else settings.seed
            seqs = self.sample(canvas.shape[0], canvas.shape[1], seed=seed, temperature=settings.temperature,
                               prefix=prefix)
        if progress is not None:
            progress.update(canvas.shape[1])
        return torch.from_numpy(np.stack([encode_dna(s) for s in seqs])).to(canvas.device)

    def nats_per_window(self, x, score_mask=None, attention_mask=None, num_samples: int = 1,
                        generator=None, seeds=None) -> torch.Tensor:
        """(B, 1) float64 exact NLL sums of the rows of x (B, L) ids, each row its own record (its first bases
        use short contexts), counting only positions where `score_mask` is True."""
        rows = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        mask = None if score_mask is None else (score_mask.detach().cpu().numpy() if isinstance(score_mask, torch.Tensor)
                                                else np.asarray(score_mask))
        out = np.zeros((len(rows), 1), dtype=np.float64)
        for i, row in enumerate(rows):
            lp = self.log_probs(row)
            keep = ~np.isnan(lp) if mask is None else (~np.isnan(lp) & mask[i].astype(bool))
            out[i, 0] = -float(lp[keep].sum())
        return torch.from_numpy(out)

    def bits_per_base(self, sequences) -> float:
        """Pooled bits per scored base over records (DNA strings or id arrays)."""
        total, n = 0.0, 0
        for rec in sequences:
            a, b = self.score(_as_ids(rec))
            total += a
            n += b
        if n == 0:
            raise InputError("no A/C/G/T base to score (all sequences empty or N)")
        return total / n / LN2

    def next_base_probs(self, contexts: np.ndarray, context_len: np.ndarray) -> np.ndarray:
        """(B, 4) distribution of the next base for B packed contexts of the given lengths (<= order).

        `contexts[i]` packs the last `order` bases (oldest most significant); shorter usable contexts
        are its low digits."""
        bsz = contexts.shape[0]
        probs = np.full((bsz, 4), 0.25)
        bases = np.broadcast_to(np.arange(4, dtype=np.int64), (bsz, 4))
        for j in range(self.order + 1):
            use = context_len >= j
            if not use.any():
                break
            ctx_j = (contexts[use] & ((1 << (2 * j)) - 1))[:, None]
            ctx_j = np.broadcast_to(ctx_j, (int(use.sum()), 4))
            probs[use] = self._interpolate(probs[use], j, ctx_j, bases[use])
        return probs

    # --- sampling ---------------------------------------------------------------------------------
    def sample(self, num: int, length: int, seed: int | np.random.Generator = 0, temperature: float = 1.0,
               prefix: str | None = None) -> list[str]:
        """`num` sequences of total length `length` (the prefix, if given, is their start).

        Draws use float64 uniforms from numpy's Generator (inverse CDF), so a seed fixes the output.
        temperature scales log-probabilities (p^(1/T), renormalised); T -> 0 approaches greedy."""
        if num < 0 or length < 0:
            raise InputError(f"num and length must be >= 0, got num={num} length={length}")
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        prefix_codes = base_codes(encode_dna(prefix)) if prefix else np.zeros(0, dtype=np.int8)
        if prefix_codes.size > length:
            raise InputError(f"prefix is {prefix_codes.size} bp, longer than length={length}")
        out = np.empty((num, length), dtype=np.int8)
        out[:, : prefix_codes.size] = prefix_codes
        mask = (1 << (2 * self.order)) - 1 if self.order else 0
        ctx = np.zeros(num, dtype=np.int64)
        ctx_len = np.zeros(num, dtype=np.int64)
        for b in prefix_codes:
            if b < 0:
                ctx[:], ctx_len[:] = 0, 0
            else:
                ctx = ((ctx << 2) | int(b)) & mask
                ctx_len = np.minimum(ctx_len + 1, self.order)
        for pos in range(prefix_codes.size, length):
            probs = self.next_base_probs(ctx, ctx_len)
            if temperature != 1.0:
                logits = np.log(probs) / temperature
                probs = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
            cdf = np.cumsum(probs, axis=1)
            draws = rng.random(num, dtype=np.float64) * cdf[:, -1]
            nxt = np.minimum((draws[:, None] >= cdf).sum(axis=1), 3)
            out[:, pos] = nxt
            ctx = ((ctx << 2) | nxt) & mask
            ctx_len = np.minimum(ctx_len + 1, self.order)
        ids = np.where(out >= 0, out.astype(np.int64) + A_ID, A_ID + 4)  # -1 (N in prefix) -> N id 11
        return [decode_dna(row) for row in ids]

    # --- model directory --------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        """Write `config.json` + `model.safetensors` into `directory`, atomically (all or nothing)."""
        config = {
            "model_type": MODEL_TYPE,
            "order": self.order,
            "smoothing": SMOOTHING,
            "alphabet": "ACGT",
            "context_packing": "2 bits per base, oldest base most significant; key = context * 4 + base",
            "n_train_bases": self.n_train_bases,
            "validation_bits_per_base": {str(k): v for k, v in sorted(self.validation_bits_per_base.items())},
            "format_version": 1,
        }
        tensors = {}
        for j in range(self.order + 1):
            tensors[f"keys.{j}"] = np.ascontiguousarray(self.keys[j], dtype=np.int64)
            tensors[f"counts.{j}"] = np.ascontiguousarray(self.counts[j], dtype=np.int64)
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"model_type": MODEL_TYPE})

    @classmethod
    def from_pretrained(cls, directory) -> MarkovLM:
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        if not config_path.is_file() or not weights_path.is_file():
            raise InputError(f"{directory}: not a Markov model directory (expected config.json and model.safetensors)")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{config_path}: unreadable config.json ({exc})") from None
        if config.get("model_type") != MODEL_TYPE:
            raise InputError(f"{config_path}: model_type is {config.get('model_type')!r}, expected 'markov'")
        order = config.get("order")
        if not isinstance(order, int):
            raise InputError(f"{config_path}: 'order' must be an integer, got {order!r}")
        try:
            tensors = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise InputError(f"{weights_path}: unreadable safetensors file ({exc})") from None
        try:
            keys = [tensors[f"keys.{j}"] for j in range(order + 1)]
            counts = [tensors[f"counts.{j}"] for j in range(order + 1)]
        except KeyError as exc:
            raise InputError(f"{weights_path}: missing count table {exc} for order {order}") from None
        curve = {int(k): float(v) for k, v in config.get("validation_bits_per_base", {}).items()}
        return cls(order, keys, counts, validation_bits_per_base=curve,
                   n_train_bases=int(config.get("n_train_bases", 0)))


YARDSTICK_MAX_BASES = 64_000_000  # a larger training split is fitted on evenly spaced 1 Mb chunks of it


def markov_yardstick(genome, val_windows, k_range: Iterable[int] = range(0, 13)) -> dict:
    """The k-mer Markov LM fitted on a `GenomeWindows` training split and scored on the very validation windows
    (a `TiledWindows`, same loss masks) a neural model was validated on: the yardstick printed beside every
    pretraining run's held-out bits/base. The order is chosen on those windows too, which gives the yardstick
    its best case (conservative for the model it is compared with). Seconds of work per 10 Mb."""
    chunks = []
    total = sum(len(iv) for iv in genome.train_intervals)
    step = max(1, math.ceil(total / YARDSTICK_MAX_BASES))
    for iv in genome.train_intervals:
        for i, lo in enumerate(range(iv.start, iv.end, 1_000_000)):
            if i % step == 0:
                chunks.append(genome.read(iv.record, lo, min(iv.end, lo + 1_000_000)))
    windows = [val_windows[i] for i in range(len(val_windows))]
    ids = [w["input_ids"].numpy() for w in windows]
    masks = [w["loss_mask"].numpy() for w in windows]
    orders = sorted(k_range)
    keys, counts, n = MarkovLM.count_tables(chunks, orders[-1])
    model = MarkovLM(orders[-1], keys, counts, n_train_bases=n)
    nats = np.zeros(orders[-1] + 1)
    for a, m in zip(ids, masks):  # one pass gives every order (see MarkovLM._levels)
        for j, p, is_base in model._levels(a):
            nats[j] -= float(np.log(p[is_base & m.astype(bool)]).sum())
    bases = max(1, int(sum(int(m.sum()) for m in masks)))
    order = min(orders, key=lambda o: (nats[o], o))
    best = {"order": int(order), "bits_per_base": round(float(nats[order] / bases / LN2), 5)}
    best["train_bases"] = int(sum(len(c) for c in chunks))
    best["note"] = "k-mer Markov LM (interpolated Witten-Bell), order chosen on the same validation windows"
    return best


def fit_markov_from_windows(train, val=None, k: int | None = None, k_range: Iterable[int] = range(0, 13)) -> MarkovLM:
    """Fit from a (B, L) id array, a torch tensor, or any iterable of windows/records (each a record)."""
    if hasattr(train, "detach"):
        train = train.detach().cpu().numpy()
    if val is not None and hasattr(val, "detach"):
        val = val.detach().cpu().numpy()
    return MarkovLM.fit(list(train), k=k, val=None if val is None else list(val), k_range=k_range)
