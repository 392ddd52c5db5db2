"""Units of likelihood: every per-base figure dna-mdlm reports is given as nats, bits and perplexity per scored base."""

from __future__ import annotations

import math

LN2 = math.log(2.0)


def per_base(nats: float, bases: int) -> dict:
    """{"nats_per_base", "bits_per_base", "perplexity", "bases_scored"} for a total of `nats` over `bases`."""
    nll = nats / max(bases, 1)
    return {"nats_per_base": nll, "bits_per_base": nll / LN2, "perplexity": math.exp(nll), "bases_scored": int(bases)}


def fmt_number(value, spec: str = ".4f", missing: str = "n/a") -> str:
    """`value` formatted with `spec` for a report or log line, or `missing` when it is None, NaN or infinite:
    a non-finite number never reaches what a user reads (metrics.json writes such values as null)."""
    try:
        ok = value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    return format(value, spec) if ok else missing
