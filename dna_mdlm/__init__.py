"""dna-mdlm: masked diffusion language models for DNA on a Caduceus (RC-aware BiMamba) backbone.

The public names load lazily, so `import dna_mdlm` stays cheap and never imports Lightning:

    from dna_mdlm import DNATokenizer, CaduceusConfig, CaduceusForMaskedLM, CaduceusForSequenceClassification, MDLM
    from dna_mdlm import sample, likelihood, embed, load_model, score_variants
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "InputError": ".errors",
    "DNATokenizer": ".tokenizer",
    "CaduceusConfig": ".models",
    "CaduceusModel": ".models",
    "CaduceusForMaskedLM": ".models",
    "CaduceusForSequenceClassification": ".models",
    "MDLM": ".diffusion.mdlm",
    "sample": ".generate",
    "generate": ".generate",
    "likelihood": ".evaluation.likelihood",
    "embed": ".embedding",
    "load_model": ".loading",
    "MarkovLM": ".baselines.markov",
    "evaluate_samples": ".evaluation.sample_quality",
    "load_language_model": ".loading",
    "score_variants": ".evaluation.variants",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dna_mdlm' has no attribute {name!r}")


def __dir__():
    return __all__
