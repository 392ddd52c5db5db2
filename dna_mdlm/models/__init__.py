"""Caduceus models (config, backbone, heads), registered with the transformers Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .configuration_caduceus import CaduceusConfig
from .modeling_caduceus import (
    CaduceusForMaskedLM,
    CaduceusForSequenceClassification,
    CaduceusModel,
    CaduceusPreTrainedModel,
)

AutoConfig.register("caduceus", CaduceusConfig, exist_ok=True)
AutoModel.register(CaduceusConfig, CaduceusModel, exist_ok=True)
AutoModelForMaskedLM.register(CaduceusConfig, CaduceusForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(CaduceusConfig, CaduceusForSequenceClassification, exist_ok=True)

__all__ = [
    "CaduceusConfig",
    "CaduceusForMaskedLM",
    "CaduceusForSequenceClassification",
    "CaduceusModel",
    "CaduceusPreTrainedModel",
]
