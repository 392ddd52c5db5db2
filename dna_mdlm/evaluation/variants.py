"""Zero-shot variant effect scores: a VCF or TSV of variants + a reference FASTA + a model -> one row per allele.

Every score is "alt minus ref" in nats, so a negative value means the model finds the alternative allele less
likely than the reference (the usual reading: more likely damaging). All scores use a window of `window` bases
of the reference centred on the variant (the variant's first changed base at index `window // 2`; an indel's
windows near a contig's right end are shifted left so that both stay inside the contig, see `_build_windows`):

* `llr`, MDLM: the masked-marginal log-ratio log p(alt | context) - log p(ref | context), renormalised over
  A/C/G/T, with [MASK] at the site and the reference everywhere else (GPN, Benegas et al. PNAS 2023;
  PlantCaduceus, Zhai et al. 2024; MDLM's SUBS denoiser output at a masked position is exactly that
  conditional). Averaged over the two strands: a Caduceus-PS model is RC-equivariant, so one pass already
  gives both (equal up to float rounding); Caduceus-Ph / plain models also run the reverse complement and
  the two log-ratios are averaged. SNVs only (MNVs and indels get NA: use `elbo`).
* `llr`, AR and Markov models: log p(alt window) - log p(ref window), exact, averaged over both strands (the
  whole-sequence likelihood difference used by Evo 2, Brixi et al. 2025).
* `elbo` (MDLM): NELBO(ref window) - NELBO(alt window), the continuous-time MDLM bound (Sahoo et al. 2024,
  eq. 10) estimated with K stratified Monte-Carlo times per window and common random numbers: both windows get
  the same times and the same mask draw at every reference base they share (bases after an indel keep their
  own draw), so most of the Monte-Carlo noise cancels, and the masks of the bases that have no partner (the
  SNV site, a deleted or inserted base) are integrated out (Rao-Blackwellised, see `_Scorer.elbo`). `elbo_se` is the standard error over the K paired differences.
  It scores SNVs, MNVs and indels. The alt window keeps `window` bases: a deletion pulls in reference bases
  from the right, an insertion pushes them out.
* `embedding_distance` (any Caduceus model): cosine distance 1 - cos(mean embedding(ref window), mean
  embedding(alt window)); not signed.

Indels are trimmed and left-aligned first, so every spelling of the same allele gets the same window and score.
Windows that run past a contig end are padded with N (never scored, never dropped); `padded_bases` says how
many. Randomness (the ELBO's times and masks) is a function of (seed, contig, site), so a score does not
depend on the batch size, on the input order or on which other variants are in the file.

Bad input is an `InputError` naming `file:line`, raised in a validation pass that reads the whole input
before any scoring, so a bad line at the end of a large VCF fails in seconds and nothing is written: an
unknown contig, a position past the contig end, a REF that differs from the FASTA (or a counted warning
and an NA row with `skip_mismatched`), a malformed line. Alleles that cannot be scored by construction
(ALT `.`, symbolic or `*` alleles, N in an allele, ALT equal to REF) get a row with NA scores and a status.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
from tqdm.auto import tqdm

from ..baselines.ar import ar_token_nll
from ..baselines.markov import MarkovLM
from ..data.genome import GenomeWindows
from ..diffusion.mdlm import MDLM, scorable
from ..errors import InputError
from ..io.regions import ContigResolver
from ..io.variants import PROBLEM_NO_ALT, PROBLEM_SAME, PROBLEM_UNSUPPORTED, ScoreColumn, Variant, VariantFile, open_score_writer
from ..loading import as_language_model, load_language_model, resolve_device
from ..models.modeling_caduceus import masked_pool
from ..seeding import derived_seed
from ..tokenizer import A_ID, DEFAULT_WINDOW, MASK_ID, N_ID, T_ID, complement_map, encode_dna, rc_ids

SCORES = ("llr", "elbo", "embedding_distance")
SUPPORTED = {"mdlm": SCORES, "ar": ("llr", "embedding_distance"), "markov": ("llr",)}
DEFAULT_SCORES = {"mdlm": ("llr", "elbo"), "ar": ("llr",), "markov": ("llr",)}
STATUS_OK = "ok"
STATUS_MISMATCH = "ref_mismatch"
_COMPLEMENT = np.asarray(complement_map(), dtype=np.int64)
# Alleles held in memory at once (the unit of streaming): 512, fewer for long windows so that a chunk's
# windows stay near 2^22 tokens.
CHUNK_ALLELES = 512
CHUNK_TOKENS = 1 << 22

LLR_DESCRIPTIONS = {
    "mdlm": "masked-marginal log p(alt)-log p(ref) at the masked site over A/C/G/T, both strands averaged (nats)",
    "ar": "log-likelihood of the alt window minus the ref window, both strands averaged (nats)",
    "markov": "log-likelihood of the alt window minus the ref window under the k-mer Markov LM, both strands averaged (nats)",
}


def score_columns(kind: str, scores: Sequence[str]) -> list[ScoreColumn]:
    """The output columns for these scores, in output order (scores, then padded_bases and status)."""
    cols = []
    if "llr" in scores:
        cols.append(ScoreColumn("llr", "DM_LLR", "Float", LLR_DESCRIPTIONS[kind]))
    if "elbo" in scores:
        cols.append(ScoreColumn("elbo", "DM_ELBO", "Float", "MDLM NELBO(ref window) - NELBO(alt window), Monte-Carlo with common random numbers (nats)"))
        cols.append(ScoreColumn("elbo_se", "DM_ELBO_SE", "Float", "Monte-Carlo standard error of DM_ELBO (nats)"))
    if "embedding_distance" in scores:
        cols.append(ScoreColumn("embedding_distance", "DM_EMB_DIST", "Float",
                                "cosine distance between the mean embeddings of the ref and alt windows"))
    cols.append(ScoreColumn("padded_bases", "DM_PADDED", "Integer", "N bases padded where the window runs past the contig end"))
    cols.append(ScoreColumn("status", "DM_STATUS", "String",
                            "ok, ref_mismatch, unsupported_allele, no_alt or alt_equals_ref (scores are missing unless ok)"))
    return cols


# ------------------------------------------------------------------------------------------------------
# checking variants against the reference
# ------------------------------------------------------------------------------------------------------


def _short(allele: str) -> str:
    return allele if len(allele) <= 20 else allele[:20] + "..."


class _Reference:
    """The FASTA seen by the scorer: contig aliasing, REF checks and N-padded windows."""

    def __init__(self, fasta, unknown: str = "error"):
        # The --unknown policy of every FASTA-reading verb: an IUPAC code in a window that is read is an error
        # naming file, line, column and record (unknown="error"), or context read as N (unknown="N").
        self.genome = GenomeWindows(fasta, window=1, max_n_frac=1.0, unknown=unknown)
        self.lengths = self.genome.lengths
        self.resolve = ContigResolver(list(self.lengths))
        self.fasta = fasta

    def contig(self, v: Variant) -> str:
        name = self.resolve(v.chrom)
        if name is None:
            shown = ", ".join(list(self.lengths)[:5]) + (", ..." if len(self.lengths) > 5 else "")
            raise InputError(f"{v.where}: contig {v.chrom!r} is not in the FASTA {self.fasta} ({len(self.lengths)} "
                             f"contigs: {shown}); use the reference build the variants were called on")
        return name

    def check(self, v: Variant) -> tuple[str, str | None]:
        """(contig, None) if REF matches, (contig, message) on a mismatch; InputError on anything else."""
        contig = self.contig(v)
        length = self.lengths[contig]
        if v.pos > length + (0 if v.ref else 1):
            raise InputError(f"{v.where}: position {v.pos} is past the end of contig {contig!r} ({length} bp)")
        if not v.ref:
            return contig, None
        end = v.pos - 1 + len(v.ref)
        found = self.genome.fetch(contig, v.pos - 1, min(end, length)).upper()
        if end > length:
            return contig, (f"{v.where}: REF at {v.chrom}:{v.pos} ({len(v.ref)} bp) runs past the end of contig {contig!r} "
                            f"({length} bp)")
        if found != v.ref:
            return contig, (f"{v.where}: REF {_short(v.ref)} does not match the FASTA at {v.chrom}:{v.pos} "
                            f"({_short(found)}); "
                            f"wrong reference build? (--skip-mismatched skips such rows with a warning)")
        return contig, None

    def left_align(self, contig: str, start: int, ref: str, alt: str) -> tuple[int, str, str]:
        """Shift a trimmed indel left while the base before it equals its last base (vt normalize; Tan et al.,
        Bioinformatics 31:2202, 2015), so every equivalent spelling (VCF anchor, TSV '-', either end of a
        repeat) gets the same site, window and random numbers."""
        while (not ref or not alt) and (ref or alt) and start > 0:
            before = self.genome.fetch(contig, start - 1, start).upper()
            allele = ref or alt
            if before != allele[-1]:
                break
            start -= 1
            ref, alt = (before + ref[:-1], alt) if ref else (ref, before + alt[:-1])
        return start, ref, alt

    def read(self, contig: str, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of contig[start:end] with N outside the contig, and a bool mask of the padded positions."""
        length = self.lengths[contig]
        lo, hi = max(start, 0), min(end, length)
        ids = np.full(end - start, N_ID, dtype=np.int64)
        if hi > lo:
            ids[lo - start:hi - start] = self.genome.read(contig, lo, hi)
        pad = np.ones(end - start, dtype=bool)
        pad[max(lo - start, 0):max(hi - start, 0)] = False
        return ids, pad


# ------------------------------------------------------------------------------------------------------
# sites and alleles of one chunk
# ------------------------------------------------------------------------------------------------------


@dataclass
class _Allele:
    index: int  # position in the chunk
    contig: str
    start: int  # 0-based start of the trimmed REF
    ref: str
    alt: str
    site: _Site | None = None
    alt_ids: np.ndarray | None = None  # (W,)
    alt_src: np.ndarray | None = None  # (W,) index into the site's random numbers, per alt-window position
    padded: int = 0
    scores: dict = field(default_factory=dict)

    @property
    def is_snv(self) -> bool:
        return len(self.ref) == 1 and len(self.alt) == 1


@dataclass
class _Site:
    contig: str
    centre: int  # 0-based
    alleles: list = field(default_factory=list)
    ref_ids: np.ndarray | None = None
    ext_ids: np.ndarray | None = None
    ext_pad: np.ndarray | None = None
    n_ext: int = 0  # extra reference bases past the window, pulled in by deletions
    n_ins: int = 0  # most inserted bases of any allele here
    offset: int = 0  # index of the site in its windows (window // 2, less where an indel window is shifted)


def _site_seed(seed: int, contig: str, centre: int, stream: int) -> int:
    return derived_seed(seed, contig, centre, stream)


def _build_windows(sites: Iterable[_Site], ref: _Reference, window: int) -> None:
    """Fill each site's ref window and each allele's alt window and random-number map.

    A site with an indel near a contig's right end has its windows shifted left (the site off centre) until
    every reference base either window reads lies inside the contig: with N padding at the right, the base a
    deletion pulls in (or an insertion pushes out) would be a pad, the two windows would score different
    numbers of bases, and the score would carry about one base's log-likelihood of bias. Shifting keeps
    both windows `window` real bases long, as in the middle of a contig (only a contig shorter than
    `window` + the deletion, or an indel within its own length of the end, cannot be helped; `padded_bases`
    shows it)."""
    for site in sites:
        site.n_ext = max(max(len(a.ref) - len(a.alt), 0) for a in site.alleles)
        site.n_ins = max(len(a.alt) for a in site.alleles)
        start = site.centre - window // 2
        if any(len(a.ref) != len(a.alt) for a in site.alleles):
            over = start + window + site.n_ext - ref.lengths[site.contig]
            # the site must stay in the window with room for its longest allele
            room = window - max(site.n_ins, max(len(a.ref) for a in site.alleles)) - (site.centre - start)
            if over > 0:
                start -= max(min(over, start, room), 0)
        h = site.offset = site.centre - start
        site.ext_ids, site.ext_pad = ref.read(site.contig, start, start + window + site.n_ext)
        site.ref_ids = site.ext_ids[:window]
        for a in site.alleles:
            alt = encode_dna(a.alt) if a.alt else np.zeros(0, dtype=np.int64)
            alt = alt[:window - h]  # an insertion longer than the right half keeps only what fits
            right = window - h - len(alt)
            after = h + len(a.ref)
            a.alt_ids = np.concatenate([site.ext_ids[:h], alt, site.ext_ids[after:after + right]])
            # Random numbers: reference bases keep theirs (index = offset from the window start), inserted
            # bases get their own (indices past every reference base), so the pair shares all it can.
            a.alt_src = np.concatenate([np.arange(h), window + site.n_ext + np.arange(len(alt)),
                                        np.arange(after, after + right)])
            used = np.zeros(window + site.n_ext, dtype=bool)
            used[:window] = True
            used[after:after + right] = True
            a.padded = int(np.count_nonzero(site.ext_pad & used))


# ------------------------------------------------------------------------------------------------------
# the scorers
# ------------------------------------------------------------------------------------------------------


def _batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)], dim=0)


def _rc_np(ids: np.ndarray) -> np.ndarray:
    return _COMPLEMENT[ids[..., ::-1]]


class _Scorer:
    """Computes the requested scores for the alleles of one chunk (all forwards batched)."""

    def __init__(self, lm, window: int, scores: Sequence[str], samples: int, batch_size: int,
                 seed: int, device: torch.device):
        """lm: the language model (`MDLM`, `AR` or `MarkovLM`); its type chooses how each score is computed."""
        self.lm, self.model = lm, getattr(lm, "model", lm)  # the network itself (a MarkovLM is its own)
        self.window, self.scores = window, tuple(scores)
        self.samples, self.batch_size, self.seed, self.device = samples, batch_size, seed, device
        self.masked = isinstance(lm, MDLM)  # masked-marginal scores; otherwise left-to-right window likelihoods
        if self.masked:
            self.mdlm = lm
            self.rcps = bool(self.model.config.rcps)
        self.calls = 0

    # --- MDLM masked marginal --------------------------------------------------------------------
    def _site_log_probs(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(B, 4) log p(A,C,G,T | x) at positions `pos` (B,) (x already has [MASK] there), renormalised."""
        W = x.shape[1]
        t = torch.full((x.shape[0],), 1.0 / W, device=x.device)  # time whose mask rate is one site per window
        rows = torch.arange(x.shape[0], device=x.device)
        lp = torch.cat([self._denoise_at(x[i:i + self.batch_size], t[i:i + self.batch_size],
                                         rows[i:i + self.batch_size] - i, pos[i:i + self.batch_size])
                        for i in range(0, x.shape[0], self.batch_size)], dim=0)
        return lp - torch.logsumexp(lp, dim=-1, keepdim=True)

    def _denoise_at(self, xb, tb, rows, pos):
        self.calls += 1
        return self.mdlm.denoise(xb, tb)[rows, pos, A_ID:T_ID + 1]

    @torch.no_grad()
    def mdlm_llr(self, sites: list[_Site]) -> None:
        sites = [s for s in sites if any(a.is_snv for a in s.alleles)]
        if not sites:
            return
        pos = torch.tensor([s.offset for s in sites], device=self.device)
        x = torch.from_numpy(np.stack([s.ref_ids for s in sites])).to(self.device)
        x[torch.arange(len(sites), device=self.device), pos] = MASK_ID
        lp = self._site_log_probs(x, pos)
        if not self.rcps:
            # The reverse strand: complement of the prediction at the mirrored position ([A,C,G,T] -> [T,G,C,A]).
            lp = 0.5 * (lp + self._site_log_probs(rc_ids(x), self.window - 1 - pos).flip(-1))
        lp = lp.double().cpu().numpy()
        for s, row in zip(sites, lp):
            for a in s.alleles:
                if a.is_snv:
                    a.scores["llr"] = float(row["ACGT".index(a.alt)] - row["ACGT".index(a.ref)])

    # --- window log-likelihoods (AR, Markov) ------------------------------------------------------
    @torch.no_grad()
    def _window_loglik(self, windows: np.ndarray) -> np.ndarray:
        """(B,) log-likelihood of each window (A/C/G/T positions only) averaged over both strands, nats."""
        both = np.concatenate([windows, _rc_np(windows)], axis=0)
        if isinstance(self.lm, MarkovLM):
            ll = np.array([np.nansum(self.model.log_probs(w)) for w in both])
        else:
            def one(xb):
                self.calls += 1
                nll = ar_token_nll(self.model, xb)
                return -torch.where(scorable(xb), nll, torch.zeros_like(nll)).double().sum(1)

            ll = _batched(one, torch.from_numpy(both).to(self.device), self.batch_size).cpu().numpy()
        n = len(windows)
        return 0.5 * (ll[:n] + ll[n:])

    def window_llr(self, sites: list[_Site]) -> None:
        refs = np.stack([s.ref_ids for s in sites])
        alleles = [a for s in sites for a in s.alleles]
        alts = np.stack([a.alt_ids for a in alleles])
        ll = self._window_loglik(np.concatenate([refs, alts], axis=0))
        ref_ll = {id(s): v for s, v in zip(sites, ll[: len(sites)])}
        for a, v in zip(alleles, ll[len(sites):]):
            a.scores["llr"] = float(v - ref_ll[id(a.site)])

    # --- MDLM ELBO with common random numbers --------------------------------------------------------
    def _site_randoms(self, site: _Site) -> tuple[torch.Tensor, torch.Tensor]:
        """(K,) times and (K, W + n_ext + n_ins) uniforms; each part from its own stream so that the values
        at a reference base do not depend on how far the site's indels reach."""
        K, W = self.samples, self.window
        g_t = torch.Generator().manual_seed(_site_seed(self.seed, site.contig, site.centre, 0))
        g_ref = torch.Generator().manual_seed(_site_seed(self.seed, site.contig, site.centre, 1))
        g_ins = torch.Generator().manual_seed(_site_seed(self.seed, site.contig, site.centre, 2))
        u0 = torch.rand((), generator=g_t)
        eps = self.mdlm.sampling_eps
        t = eps + (1 - eps) * ((u0 + torch.arange(K)) / K)  # stratified over [eps, 1]
        # (n, K) then transposed: the first W rows are the same whatever n_ext is.
        u_ref = torch.rand((W + site.n_ext, K), generator=g_ref).T
        u_ins = torch.rand((max(site.n_ins, 0), K), generator=g_ins).T
        return t, torch.cat([u_ref, u_ins], dim=1)

    @torch.no_grad()
    def elbo(self, sites: list[_Site]) -> None:
        """NELBO(ref) - NELBO(alt) per allele, K paired time samples, common random numbers.

        Positions that have no partner in the other window carry the estimator's variance: masked with
        probability m = mask_prob(t), they add w(t) = 1/t times a log-probability (log-linear schedule), a
        spike at small t. Their mask is therefore integrated out (Rao-Blackwellised: both branches are run
        and averaged with weights m and 1 - m, the same expectation with less variance):
          * SNV: given the masks elsewhere, with the site masked both inputs are identical and the difference
            is the site term w(t) m (log p(alt | z) - log p(ref | z)); with it visible the difference is what
            the visible ref vs alt base does to the masked neighbours.
          * 1-bp deletion: the deleted base (ref window) and the base pulled in at the alt window's end;
            1-bp insertion: the inserted base (alt window) and the base pushed out of the ref window's end.
            Longer indels and MNVs draw these masks like the others.
        Passes per site and sample: the ref window with the site masked and visible (shared by all alleles at
        the site; two more for a site with a 1-bp insertion), one per SNV allele, two per 1-bp indel, one per
        other allele.
        """
        K, W = self.samples, self.window
        sched = self.mdlm.schedule
        # (owner, role, site, ids, random-number map, forced (mode, position) or None)
        windows: list[tuple] = []
        randoms = {}
        for s in sites:
            randoms[id(s)] = self._site_randoms(s)
            h = s.offset
            ref_forced = {h}  # ref-window positions whose mask is integrated out (the site, always)
            for a in s.alleles:
                alone = np.setdiff1d(np.arange(W), a.alt_src)  # ref bases the alt window lacks
                if not a.is_snv and len(alone) == 1:
                    ref_forced.add(int(alone[0]))
            for pos in sorted(ref_forced):
                windows.append((s, ("masked", pos), s, s.ref_ids, np.arange(W), ("mask", pos)))
                windows.append((s, ("visible", pos), s, s.ref_ids, np.arange(W), ("visible", pos)))
            for a in s.alleles:
                unpaired = np.flatnonzero(a.alt_src >= W)
                if a.is_snv:
                    windows.append((a, "visible", s, a.alt_ids, a.alt_src, ("visible", h)))
                elif len(unpaired) == 1:
                    windows.append((a, "masked", s, a.alt_ids, a.alt_src, ("mask", int(unpaired[0]))))
                    windows.append((a, "visible", s, a.alt_ids, a.alt_src, ("visible", int(unpaired[0]))))
                else:
                    windows.append((a, "drawn", s, a.alt_ids, a.alt_src, None))
        rows = [(w, k) for w in range(len(windows)) for k in range(K)]
        nelbo = np.zeros(len(rows))
        site_lp = np.zeros((len(rows), 4))
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b:b + self.batch_size]
            x = torch.from_numpy(np.stack([windows[w][3] for w, _ in batch]))
            t = torch.stack([randoms[id(windows[w][2])][0][k] for w, k in batch])
            u = torch.stack([randoms[id(windows[w][2])][1][k, torch.from_numpy(windows[w][4])] for w, k in batch])
            for i, (w, _) in enumerate(batch):
                if windows[w][5] is not None:
                    mode, pos = windows[w][5]
                    u[i, pos] = -1.0 if mode == "mask" else 2.0
            z = torch.where(u < sched.mask_prob(t)[:, None], torch.full_like(x, MASK_ID), x)
            x, z, t = x.to(self.device), z.to(self.device), t.to(self.device)
            self.calls += 1
            logp = self.mdlm.denoise(z, t)
            nll = -logp.gather(-1, x[..., None]).squeeze(-1)
            tok = torch.where(scorable(x), nll * sched.weight(t)[:, None], torch.zeros_like(nll))
            nelbo[b:b + len(batch)] = tok.double().sum(1).cpu().numpy()
            at = torch.tensor([windows[w][2].offset for w, _ in batch], device=logp.device)
            site_lp[b:b + len(batch)] = logp[torch.arange(len(batch), device=logp.device), at,
                                             A_ID:T_ID + 1].double().cpu().numpy()
        nelbo = nelbo.reshape(len(windows), K)
        site_lp = site_lp.reshape(len(windows), K, 4)
        runs = {(id(w[0]), w[1]): (row, lp) for w, row, lp in zip(windows, nelbo, site_lp)}
        for s in sites:
            t, u = randoms[id(s)]
            m = sched.mask_prob(t).double().numpy()
            h = s.offset
            ref_masked, ref_lp = runs[(id(s), ("masked", h))]
            ref_visible = runs[(id(s), ("visible", h))][0]
            for a in s.alleles:
                if a.is_snv:
                    site_term = (m * sched.weight(t).double().numpy()
                                 * (ref_lp[:, "ACGT".index(a.alt)] - ref_lp[:, "ACGT".index(a.ref)]))
                    diff = site_term + (1.0 - m) * (ref_visible - runs[(id(a), "visible")][0])
                else:
                    alone = np.setdiff1d(np.arange(W), a.alt_src)
                    if len(alone) == 1:  # integrate out the mask of the one ref base the alt window lacks
                        pos = int(alone[0])
                        ref_nelbo = (m * runs[(id(s), ("masked", pos))][0]
                                     + (1.0 - m) * runs[(id(s), ("visible", pos))][0])
                    else:  # keep the drawn mask at the site (the other masks are drawn in every pass)
                        ref_nelbo = np.where(u[:, h].double().numpy() < m, ref_masked, ref_visible)
                    if (id(a), "drawn") in runs:
                        alt_nelbo = runs[(id(a), "drawn")][0]
                    else:
                        alt_nelbo = m * runs[(id(a), "masked")][0] + (1.0 - m) * runs[(id(a), "visible")][0]
                    diff = ref_nelbo - alt_nelbo  # NELBO(ref) - NELBO(alt), paired per time sample
                a.scores["elbo"] = float(diff.mean())
                a.scores["elbo_se"] = float(diff.std(ddof=1) / math.sqrt(K))

    # --- embeddings -----------------------------------------------------------------------------------
    @torch.no_grad()
    def embedding_distance(self, sites: list[_Site]) -> None:
        alleles = [a for s in sites for a in s.alleles]
        x = torch.from_numpy(np.stack([s.ref_ids for s in sites] + [a.alt_ids for a in alleles]))

        def one(xb):
            self.calls += 1
            xb = xb.to(self.device)
            ts = torch.zeros(xb.shape[0], device=xb.device) if self.model.config.time_conditioning else None
            hidden = self.model.caduceus(xb, timesteps=ts).last_hidden_state.float()
            return masked_pool(hidden, xb != N_ID, "mean").cpu()

        emb = _batched(one, x, self.batch_size)
        ref = {id(s): e for s, e in zip(sites, emb[: len(sites)])}
        for a, e in zip(alleles, emb[len(sites):]):
            cos = torch.nn.functional.cosine_similarity(ref[id(a.site)], e, dim=0)
            a.scores["embedding_distance"] = float(1.0 - cos)


def _group_sites(alleles: list[_Allele]) -> list[_Site]:
    """Alleles sharing a (contig, start) share one site: one ref window, one masked pass, one set of randoms."""
    sites: dict[tuple[str, int], _Site] = {}
    for a in alleles:
        site = sites.setdefault((a.contig, a.start), _Site(a.contig, a.start))
        site.alleles.append(a)
        a.site = site
    return list(sites.values())


# ------------------------------------------------------------------------------------------------------
# the front door
# ------------------------------------------------------------------------------------------------------


def _as_variants(variants, fmt: str, flag: str):
    """A VariantFile (re-readable) for a path; a list of Variants for tuples / Variant objects."""
    if isinstance(variants, (str, os.PathLike)):
        return VariantFile(variants, fmt, flag)
    out = []
    for i, v in enumerate(variants):
        if isinstance(v, Variant):
            out.append(v)
            continue
        try:
            chrom, pos, ref, alt = v[:4]
        except (TypeError, ValueError):
            raise InputError(f"variants[{i}]: expected (chrom, pos, ref, alt), got {v!r}") from None
        ref = "" if ref in ("-", None) else str(ref).upper()
        alt = "" if alt in ("-", None) else str(alt).upper()
        out.append(Variant(str(chrom), int(pos), ref, alt, ".", "variants", i + 1, i, 0, 1))
    return out


def _resolve_scores(scores, kind: str) -> tuple[str, ...]:
    """The scores to compute for a language model of `kind` (`lm.kind`); InputError for an unavailable one."""
    if scores is None:
        return DEFAULT_SCORES[kind]
    if isinstance(scores, str):
        scores = [s.strip() for s in scores.split(",") if s.strip()]
    scores = tuple(dict.fromkeys(scores))
    if not scores:
        raise InputError(f"--scores: expected a comma-separated list of {', '.join(SUPPORTED[kind])}")
    for s in scores:
        if s not in SCORES:
            raise InputError(f"--scores {s}: unknown score (choose from {', '.join(SCORES)})")
        if s not in SUPPORTED[kind]:
            raise InputError(f"--scores {s}: not available for a{'n' if kind[0] in 'aeiou' else ''} {kind} model "
                             f"(available: {', '.join(SUPPORTED[kind])})")
    return scores


def score_variants(model, fasta: str | os.PathLike, variants, out: str | os.PathLike | None = None, *,
                   scores: str | Sequence[str] | None = None, window: int | None = None, samples: int = 8,
                   batch_size: int = 32, device: str = "cpu", seed: int = 0, skip_mismatched: bool = False,
                   fmt: str = "auto", progress: bool = False, flag: str = "variants", unknown: str = "error") -> dict:
    """Score every allele of `variants` against `fasta` with `model`; see the module docstring for the scores.

    Args:
        model: a model directory (MDLM, AR or Markov), or a loaded CaduceusForMaskedLM / MDLM / MarkovLM.
        fasta: reference FASTA (plain, gzip or bgzip); contig names are matched with the `chr`-prefix /
            version aliasing of the Genomic Benchmarks readers (`20` finds `chr20` and the reverse).
        variants: a VCF (plain, gzip, bgzip) or TSV path (`fmt` 'auto' sniffs `##fileformat=VCF`), or a
            sequence of (chrom, pos, ref, alt) tuples (pos 1-based, '-' or '' for an empty allele).
        out: output path, TSV or (ending in .vcf / .vcf.gz) a sites-only VCF with DM_* INFO fields, written
            atomically and streamed (memory bounded by one chunk of 512 alleles); None returns the rows.
        scores: any of 'llr', 'elbo', 'embedding_distance' (default: llr and elbo for an MDLM, llr otherwise).
        window: bases per window (default: the model's training window, else 1024).
        samples: Monte-Carlo time samples K per window for `elbo` (>= 2, for a standard error).
        batch_size: windows per forward pass. device: cpu | cuda | cuda:N | auto. seed: the ELBO's randomness.
        skip_mismatched: a REF that does not match the FASTA becomes an NA row (status ref_mismatch) and a
            counted warning instead of an error.
        progress: show a progress bar over alleles on stderr. flag: the CLI flag named in error messages.
        unknown: IUPAC ambiguity codes (R, Y, ...) in the reference bases a window reads: 'error' (an InputError
            naming file, line, column and record; nothing written) or 'N' (read as N, never scored).

    Returns: a summary dict (counts of alleles, scored, skipped by reason, padded, warnings, settings), with
    `rows` (one dict per allele, input order) when `out` is None.

    Raises: InputError (one line, naming file:line) for a malformed line, an unknown contig, a position past
    a contig end, a REF mismatch (unless `skip_mismatched`), bad arguments or a bad model directory.
    """
    started = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected a positive integer")
    dev = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        lm = load_language_model(model, dev, verb="score-variants")
    else:
        lm = as_language_model(model, verb="score-variants")
    kind, model_obj = lm.kind, getattr(lm, "model", lm)  # the network itself (a MarkovLM is its own)
    scores = _resolve_scores(scores, kind)
    if "elbo" in scores and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 2):
        raise InputError(f"--mc-samples {samples}: the ELBO needs at least 2 Monte-Carlo samples per window (for its "
                         f"standard error)")
    if window is None:
        config = getattr(model_obj, "config", None)
        window = config.window if config is not None else DEFAULT_WINDOW
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise InputError(f"--window {window}: expected an integer >= 2 (bases per window)")
    reference = _Reference(fasta, unknown)
    columns = score_columns(kind, scores)
    source = _as_variants(variants, fmt, flag)
    warnings: list[str] = []
    summary = {"model": str(model) if isinstance(model, (str, os.PathLike)) else type(model_obj).__name__,
               "kind": kind, "scores": list(scores), "window": window, "fasta": str(fasta),
               "input": str(variants) if isinstance(variants, (str, os.PathLike)) else "sequence",
               "format": getattr(source, "format", "sequence"), "seed": seed}
    if "elbo" in scores:
        summary["samples"] = samples
    if isinstance(lm, MDLM):
        summary["strands"] = "one pass (RC-equivariant PS model)" if model_obj.config.rcps else "forward + reverse complement averaged"

    # Pass 1: validate everything before any forward pass (and count, for the progress bar).
    counts = {"alleles": 0, "records": 0, STATUS_MISMATCH: 0}
    last_record = None
    for v in source:
        counts["alleles"] += 1
        if (v.source, v.record) != last_record:
            counts["records"] += 1
            last_record = (v.source, v.record)
        _, problem = reference.check(v)
        if problem is not None:
            if not skip_mismatched:
                raise InputError(problem)
            counts[STATUS_MISMATCH] += 1
            if len(warnings) < 10:
                warnings.append(problem.replace(" (--skip-mismatched skips such rows with a warning)", "") + "; skipped")
    if counts["alleles"] == 0:
        raise InputError(f"--{flag} {variants}: no variants found")
    if counts[STATUS_MISMATCH]:
        warnings.append(f"{counts[STATUS_MISMATCH]} allele(s) with a REF that does not match the FASTA were skipped "
                        f"(status ref_mismatch)")

    scorer = _Scorer(lm, window, scores, samples, batch_size, seed, dev)
    status_counts = {STATUS_OK: 0, STATUS_MISMATCH: 0, PROBLEM_UNSUPPORTED: 0, PROBLEM_NO_ALT: 0, PROBLEM_SAME: 0}
    tally = {"padded": 0, "llr_not_applicable": 0}
    rows: list[dict] | None = [] if out is None else None
    bar = None
    if progress:
        bar = tqdm(total=counts["alleles"], desc=f"score-variants ({kind})", unit="allele", leave=False)

    def scored_chunks() -> Iterator[list[tuple[Variant, dict]]]:
        it = iter(source)
        size = max(min(CHUNK_ALLELES, CHUNK_TOKENS // window), 1)
        while chunk := list(islice(it, size)):
            yield _score_chunk(chunk, reference, scorer, window, columns, status_counts, tally)
            if bar is not None:
                bar.update(len(chunk))

    try:
        if out is not None:
            header = getattr(source, "header", None)
            with open_score_writer(out, columns, header) as writer:
                for chunk in scored_chunks():
                    for v, values in chunk:
                        writer.write(v, values)
        else:
            for chunk in scored_chunks():
                for v, values in chunk:
                    rows.append({"chrom": v.chrom, "pos": v.pos, "id": v.id, "ref": v.ref or "-", "alt": v.alt or "-",
                                 **{c.name: values.get(c.name) for c in columns}})
    finally:
        if bar is not None:
            bar.close()
    n_rows = sum(status_counts.values())
    if n_rows != counts["alleles"]:  # the file changed between the two passes: never report a partial result
        raise InputError(f"--{flag} {variants}: read {counts['alleles']} alleles, then {n_rows}; was the file "
                         f"modified while scoring?")
    if tally["padded"]:
        warnings.append(f"{tally['padded']} allele(s) lie within {window // 2} bp of a contig end: their windows were "
                        f"padded with N (column padded_bases)")
    if tally["llr_not_applicable"]:
        warnings.append(f"{tally['llr_not_applicable']} allele(s) are not SNVs: the masked-marginal llr is NA for them"
                        + (" (elbo scores them)" if "elbo" in scores else " (add --scores elbo to score them)"))
    summary.update({
        "records": counts["records"], "alleles": counts["alleles"], "scored": status_counts[STATUS_OK],
        "skipped": {k: v for k, v in status_counts.items() if k != STATUS_OK},
        "padded": tally["padded"], "llr_not_applicable": tally["llr_not_applicable"],
        "network_calls": scorer.calls, "seconds": round(time.perf_counter() - started, 2), "warnings": warnings,
    })
    if out is not None:
        summary["out"] = str(out)
    else:
        summary["rows"] = rows
    return summary


def _score_chunk(chunk: list[Variant], reference: _Reference, scorer: _Scorer, window: int,
                 columns: list[ScoreColumn], status_counts: dict, tally: dict) -> list[tuple[Variant, dict]]:
    values_list, alleles = [], []
    for v in chunk:
        contig, problem = reference.check(v)
        values: dict = {}
        status = STATUS_MISMATCH if problem is not None else (v.problem or STATUS_OK)
        values["status"] = status
        status_counts[status] += 1
        if (not v.ref or not v.alt) and v.vcf is None:  # a TSV empty allele needs an anchor base for VCF output
            p = v.pos - 2 if v.pos > 1 else v.pos - 1 + len(v.ref)
            if 0 <= p < reference.lengths[contig]:
                values["anchor"] = reference.genome.fetch(contig, p, p + 1).upper()
        if status == STATUS_OK:
            start, ref, alt = reference.left_align(contig, *v.trimmed())
            alleles.append((_Allele(len(values_list), contig, start, ref, alt), values))
        values_list.append(values)
    if alleles:
        sites = _group_sites([a for a, _ in alleles])
        _build_windows(sites, reference, window)
        if "llr" in scorer.scores:
            if scorer.masked:
                scorer.mdlm_llr(sites)
            else:
                scorer.window_llr(sites)
        if "elbo" in scorer.scores:
            scorer.elbo(sites)
        if "embedding_distance" in scorer.scores:
            scorer.embedding_distance(sites)
        for a, values in alleles:
            values.update(a.scores)
            values["padded_bases"] = a.padded
            tally["padded"] += a.padded > 0
            if "llr" in scorer.scores and "llr" not in a.scores:
                tally["llr_not_applicable"] += 1
            for name, value in a.scores.items():
                if not math.isfinite(value):
                    v = chunk[a.index]
                    raise InputError(f"{v.where}: the model produced a non-finite {name} ({value}) for "
                                     f"{v.chrom}:{v.pos} {v.ref or '-'}>{v.alt or '-'}; check the model weights")
    return list(zip(chunk, values_list))
