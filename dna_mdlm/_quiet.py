"""Silence third-party chatter that says nothing about the user's run (called by the CLI and pretrain)."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Drop third-party chatter that says nothing about this run (an advert, a pytree deprecation, HF bars)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    class _NoAdverts(logging.Filter):
        def filter(self, record):
            return "litlogger" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if not any(type(f).__name__ == "_NoAdverts" for f in logger.filters):
            logger.addFilter(_NoAdverts())
    # "GPU available: False, used: False", "TPU available: ..." and similar INFO lines on every start.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*limit_val_batches.*")
    hf_logging.disable_progress_bar()
