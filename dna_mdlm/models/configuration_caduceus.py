"""`CaduceusConfig`: the published Caduceus field names, plus the few fields dna-mdlm adds.

Field names and defaults follow kuleshov-group/caduceus so a released `config.json` loads unchanged
(reference/caduceus.md §5.1). dna-mdlm adds `time_conditioning` (off by default, as in the MDLM DNA runs)
and `objective` ("mdlm" or "ar"), which tells every verb how to read the model's logits.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from ..tokenizer import PADDED_VOCAB_SIZE
from ..tokenizer import complement_map as default_complement_map

DEFAULT_SSM_CFG = {
    "d_state": 16,
    "d_conv": 4,
    "expand": 2,
    "dt_rank": "auto",
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init": "random",
    "dt_scale": 1.0,
    "dt_init_floor": 1e-4,
    "conv_bias": True,
    "bias": False,
    "use_fast_path": True,
}
DEFAULT_INITIALIZER_CFG = {"initializer_range": 0.02, "rescale_prenorm_residual": True, "n_residuals_per_layer": 1}


class CaduceusConfig(PretrainedConfig):
    model_type = "caduceus"

    def __init__(
        self,
        d_model: int = 128,
        n_layer: int = 4,
        vocab_size: int = PADDED_VOCAB_SIZE,
        ssm_cfg: dict | None = None,
        rms_norm: bool = True,
        residual_in_fp32: bool = False,
        fused_add_norm: bool = False,
        pad_vocab_size_multiple: int = 8,
        norm_epsilon: float = 1e-5,
        initializer_cfg: dict | None = None,
        bidirectional: bool = True,
        bidirectional_strategy: str | None = "add",
        bidirectional_weight_tie: bool = True,
        rcps: bool = True,
        complement_map: dict | None = None,
        time_conditioning: bool = False,
        objective: str = "mdlm",
        pad_token_id: int = 4,
        **kwargs,
    ):
        if vocab_size % pad_vocab_size_multiple:
            vocab_size += pad_vocab_size_multiple - vocab_size % pad_vocab_size_multiple
        if bidirectional_strategy is None:
            bidirectional_strategy = "add"
        if bidirectional_strategy not in ("add", "ew_multiply"):
            raise ValueError(f"bidirectional_strategy must be 'add' or 'ew_multiply', got {bidirectional_strategy!r}")
        if objective not in ("mdlm", "ar"):
            raise ValueError(f"objective must be 'mdlm' or 'ar', got {objective!r}")
        if objective == "ar" and (bidirectional or rcps):
            raise ValueError("an autoregressive (objective='ar') model must be unidirectional and not RC-PS")
        self.d_model = d_model
        self.n_layer = n_layer
        self.vocab_size = vocab_size
        self.ssm_cfg = {**DEFAULT_SSM_CFG, **(ssm_cfg or {})}
        self.rms_norm = rms_norm
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        self.norm_epsilon = norm_epsilon
        self.initializer_cfg = {**DEFAULT_INITIALIZER_CFG, **(initializer_cfg or {})}
        self.bidirectional = bidirectional
        self.bidirectional_strategy = bidirectional_strategy
        self.bidirectional_weight_tie = bidirectional_weight_tie
        self.rcps = rcps
        # Stored with string keys like the released config.json; extended with identity up to vocab_size.
        comp = complement_map if complement_map is not None else dict(enumerate(default_complement_map(vocab_size)))
        comp = {int(k): int(v) for k, v in comp.items()}
        for i in range(vocab_size):
            comp.setdefault(i, i)
        self.complement_map = {str(k): v for k, v in sorted(comp.items())}
        self.time_conditioning = time_conditioning
        self.objective = objective
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the backbone output: 2*d_model for Caduceus-PS (two strands), d_model otherwise."""
        return 2 * self.d_model if self.rcps else self.d_model

    def complement_list(self) -> list[int]:
        return [self.complement_map[str(i)] for i in range(self.vocab_size)]
