"""`CaduceusConfig`: the published Caduceus field names, plus the fields dna-mdlm sets, every one declared here.

Field names and defaults follow kuleshov-group/caduceus `caduceus/configuration_caduceus.py`, so a released
`config.json` loads unchanged (its `auto_map` to remote code is kept as data and never executed). As in
transformers' `models/mamba/configuration_mamba.py`, every field the code reads is declared and documented below,
including those written at training time (`train_window`, `schedule`, `objective`) and the classification-head
settings.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from ..tokenizer import DEFAULT_WINDOW, PADDED_VOCAB_SIZE
from ..tokenizer import complement_map as default_complement_map

OBJECTIVES = ("mdlm", "ar")
SCHEDULES = ("loglinear", "cosine", "linear")
POOLINGS = ("mean", "max", "first", "last", "mean+max")  # mean+max: probe features only
FEATURE_LAYERS = ("last", "all")
HEADS = ("linear", "mlp")
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
    """Configuration of a Caduceus model (Schiff et al., ICML 2024, arXiv:2403.03234).

    Args:
        d_model: width of one strand's hidden state (Caduceus-PS hidden states are `2 * d_model` wide).
        n_layer: number of BiMamba layers.
        vocab_size: token ids (12 real ones, padded to a multiple of `pad_vocab_size_multiple`: 16).
        ssm_cfg: Mamba block settings (`d_state`, `d_conv`, `expand`, `dt_rank`, `dt_min`, `dt_max`, `dt_init`,
            `dt_scale`, `dt_init_floor`, `conv_bias`, `bias`, `use_fast_path`); missing keys take mamba_ssm's defaults.
        rms_norm: RMSNorm (True, every released model) or LayerNorm.
        residual_in_fp32: keep the residual stream in float32 (False in the released configs).
        fused_add_norm: reproduce the fused Triton add-norm of the released PS models (a per-layer half swap).
        pad_vocab_size_multiple: vocabulary padding.
        norm_epsilon: epsilon of the norms.
        initializer_cfg: `initializer_range`, `rescale_prenorm_residual`, `n_residuals_per_layer`.
        bidirectional: BiMamba (True) or a causal Mamba stack (the AR baseline).
        bidirectional_strategy: how the two directions combine: "add" or "ew_multiply".
        bidirectional_weight_tie: share in/out projections between the two directions.
        rcps: reverse-complement parameter sharing (Caduceus-PS: exactly RC-equivariant); False is Caduceus-Ph or
            plain BiMamba.
        complement_map: token id -> complement id (stored with string keys, as released).
        time_conditioning: feed the MDLM noise level to the network (off, as in the MDLM DNA runs).
        objective: "mdlm" (masked diffusion, bidirectional) or "ar" (next-base prediction, causal); tells every verb
            how to read the logits.
        train_window: bases per window the model was trained on (likelihood, sampling and variant scoring default to
            it); None for a model that never recorded it (then `max_length`, else `DEFAULT_WINDOW`).
        schedule: the MDLM noise schedule the model was trained with: "loglinear", "cosine" or "linear".
        pooling_strategy: classifier pooling over real bases: "mean", "max", "first", "last" (per-view head), or
            "mean", "max", "mean+max" (probe features).
        feature_layers: None for the upstream head on the last layer's per-strand views; "last" or "all" for the
            frozen-encoder probe layout (RC-invariant pooled features of the last / every layer, standardised).
        head: classifier head: "linear" (upstream's bias-free `score`) or "mlp".
        head_hidden: hidden width of the MLP head (default 2 * d_model).
        head_dropout: dropout inside the MLP head.
        conjoin_train / conjoin_eval: for non-PS classifiers, also run the reverse complement and average the logits
            in training / at evaluation (post-hoc conjoining of Caduceus-Ph).
        distillation: None, or what `dna-mdlm distill` made of this model (`method`, `teacher`, `teacher_steps`,
            `rounds`, `steps`): a student that samples in `steps` reverse steps per window (the default of `sample`).
        num_classes: class-conditional MDLM: the number of classes (0 or None: an unconditional model, with no class
            embedding and the state-dict keys of every released model). A conditional model adds a learned class
            vector (a table of `num_classes + 1` rows, the last one the null class) to the input embeddings; a call
            without labels uses the null class, so one model is both conditional and unconditional (classifier-free
            guidance; Ho & Salimans 2022, arXiv 2207.12598; for masked diffusion Schiff et al., arXiv 2412.10193).
        class_names: the name of each class id (`num_classes` strings), as the labels table spelled them.
        cond_dropout: training probability of replacing a label by the null class (0.1, as in Schiff et al.).
    """

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
        train_window: int | None = None,
        schedule: str = "loglinear",
        pooling_strategy: str = "mean",
        head: str = "linear",
        head_hidden: int | None = None,
        head_dropout: float = 0.1,
        conjoin_train: bool = False,
        conjoin_eval: bool = False,
        feature_layers: str | None = None,
        distillation: dict | None = None,
        num_classes: int | None = None,
        class_names: list | None = None,
        cond_dropout: float = 0.1,
        pad_token_id: int = 4,
        **kwargs,
    ):
        if vocab_size % pad_vocab_size_multiple:
            vocab_size += pad_vocab_size_multiple - vocab_size % pad_vocab_size_multiple
        if bidirectional_strategy is None:
            bidirectional_strategy = "add"
        if bidirectional_strategy not in ("add", "ew_multiply"):
            raise ValueError(f"bidirectional_strategy must be 'add' or 'ew_multiply', got {bidirectional_strategy!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be 'mdlm' or 'ar', got {objective!r}")
        if objective == "ar" and (bidirectional or rcps):
            raise ValueError("an autoregressive (objective='ar') model must be unidirectional and not RC-PS")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if pooling_strategy not in POOLINGS:
            raise ValueError(f"pooling_strategy must be one of {', '.join(POOLINGS)}, got {pooling_strategy!r}")
        if feature_layers is not None and feature_layers not in FEATURE_LAYERS:
            raise ValueError(f"feature_layers must be None or one of {', '.join(FEATURE_LAYERS)}, got {feature_layers!r}")
        if head not in HEADS:
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        if train_window is not None and (not isinstance(train_window, int) or train_window < 1):
            raise ValueError(f"train_window must be a positive number of bases, got {train_window!r}")
        self.d_model = d_model
        self.n_layer = n_layer
        num_classes = int(num_classes or 0)
        if num_classes < 0 or num_classes == 1:
            raise ValueError(f"num_classes must be 0 (unconditional) or at least 2, got {num_classes}")
        if num_classes and objective != "mdlm":
            raise ValueError("class conditioning is implemented for the MDLM objective only")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        if not (isinstance(cond_dropout, (int, float)) and 0.0 <= cond_dropout < 1.0):
            raise ValueError(f"cond_dropout must be a probability in [0, 1), got {cond_dropout!r}")
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
        self.train_window = train_window
        self.schedule = schedule
        self.pooling_strategy = pooling_strategy
        self.head = head
        self.head_hidden = head_hidden
        self.head_dropout = head_dropout
        self.conjoin_train = conjoin_train
        self.conjoin_eval = conjoin_eval
        self.feature_layers = feature_layers
        self.distillation = distillation
        self.num_classes = num_classes or None
        self.class_names = ([str(c) for c in class_names] if class_names is not None
                            else ([str(i) for i in range(num_classes)] if num_classes else None))
        self.cond_dropout = float(cond_dropout)
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the backbone output: 2*d_model for Caduceus-PS (two strands), d_model otherwise."""
        return 2 * self.d_model if self.rcps else self.d_model

    @property
    def window(self) -> int:
        """The window the model works in: `train_window`, else the released configs' `max_length`, else 1024."""
        return int(self.train_window or getattr(self, "max_length", None) or DEFAULT_WINDOW)

    @property
    def conditional(self) -> bool:
        """True for a class-conditional model (`num_classes` >= 2)."""
        return bool(self.num_classes)

    @property
    def null_class(self) -> int:
        """Row of the class table that means "no class" (the unconditional model inside a conditional one)."""
        return int(self.num_classes or 0)

    def complement_list(self) -> list[int]:
        return [self.complement_map[str(i)] for i in range(self.vocab_size)]
