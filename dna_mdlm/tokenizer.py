"""DNA character tokenizer: the Caduceus-compatible vocabulary, the complement map and `rc()`.

One token per base. The ids are fixed (see `VOCAB`) so published Caduceus weights load unchanged.
Two encoders live here: the Hugging Face `PreTrainedTokenizer` API for users who want `tokenizer(...)`,
`save_pretrained` and `from_pretrained`, and a vectorised `encode_dna` (a 256-entry lookup table) that the
data pipeline uses, because per-character Python tokenisation is far too slow for genome windows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizer

from .errors import InputError

SPECIAL_TOKENS = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"]
BASES = ["A", "C", "G", "T", "N"]
VOCAB = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BASES)}
PADDED_VOCAB_SIZE = 16  # 12 real ids padded to a multiple of 8, as in the released checkpoints
DEFAULT_WINDOW = 1024  # bases per model window when neither a recipe nor a model records one

CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(7)
A_ID, C_ID, G_ID, T_ID, N_ID = range(7, 12)
BASE_IDS = (A_ID, C_ID, G_ID, T_ID)

_COMPLEMENT_BASE = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
# IUPAC ambiguity codes: an error by default, mapped to N only when the caller asks.
IUPAC_AMBIGUOUS = set("RYSWKMBDHVU")


def complement_map(vocab_size: int = PADDED_VOCAB_SIZE) -> list[int]:
    """comp[id] for every id: A<->T, C<->G, everything else (specials, N, padding ids) maps to itself."""
    comp = list(range(vocab_size))
    for base, other in _COMPLEMENT_BASE.items():
        comp[VOCAB[base]] = VOCAB[other]
    return comp


def _build_lookup(unknown: str) -> np.ndarray:
    # -1 marks a byte that is an error; lower case is folded to upper (soft-masked repeats).
    table = np.full(256, -1, dtype=np.int64)
    for base in BASES:
        table[ord(base)] = VOCAB[base]
        table[ord(base.lower())] = VOCAB[base]
    if unknown == "N":
        for code in IUPAC_AMBIGUOUS:
            table[ord(code)] = N_ID
            table[ord(code.lower())] = N_ID
    return table


_LOOKUP = {"error": _build_lookup("error"), "N": _build_lookup("N")}
_DECODE = np.array([ord("?")] * 256, dtype=np.uint8)
for _b in BASES:
    _DECODE[VOCAB[_b]] = ord(_b)
_DECODE[MASK_ID] = ord("-")  # masked positions print as '-' in decoded strings


class InvalidSequenceError(InputError):
    """A sequence holds a character outside ACGTN (case-insensitive)."""


def encode_dna(seq: str | bytes, unknown: str = "error") -> np.ndarray:
    """Fast path: DNA string -> int64 ids. `unknown="N"` maps IUPAC codes to N; anything else still errors."""
    if unknown not in _LOOKUP:
        raise ValueError(f"unknown must be 'error' or 'N', got {unknown!r}")
    raw = np.frombuffer(seq.encode("ascii", "replace") if isinstance(seq, str) else seq, dtype=np.uint8)
    ids = _LOOKUP[unknown][raw]
    if ids.size and ids.min() < 0:
        pos = int(np.argmax(ids < 0))
        ch = chr(raw[pos]) if raw[pos] < 128 else "\\x%02x" % raw[pos]
        # The hint only where it helps: an IUPAC code under the default policy.
        hint = "; pass --unknown N to read IUPAC ambiguity codes as N" if (
            unknown != "N" and ch.upper() in IUPAC_AMBIGUOUS) else ""
        raise InvalidSequenceError(
            f"invalid character {ch!r} at position {pos} (expected A, C, G, T or N{hint})"
        )
    return ids


def decode_dna(ids) -> str:
    """ids (any int array or tensor, 1-D) -> string; [MASK] prints as '-', other specials as '?'."""
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    return _DECODE[arr.astype(np.int64) & 0xFF].tobytes().decode("ascii")


def rc_string(seq: str) -> str:
    """Reverse complement of a DNA string, keeping case (a soft-masked base stays lower case)."""
    return seq.translate(_RC_TABLE)[::-1]


_RC_TABLE = str.maketrans("ACGTNacgtn", "TGCANtgcan")
_COMP_TENSOR = torch.tensor(complement_map(), dtype=torch.long)


def rc_ids(ids: torch.Tensor) -> torch.Tensor:
    """rc(ids)[..., l] = comp(ids[..., L-1-l]) for a (..., L) id tensor (batched)."""
    return _COMP_TENSOR.to(ids.device)[ids.flip(-1)]


class DNATokenizer(PreTrainedTokenizer):
    """Hugging Face tokenizer for DNA with the Caduceus vocabulary.

    Soft-masked (lower-case) bases are upper-cased. Characters outside ACGTN raise
    `InvalidSequenceError` unless `unknown="N"`, which maps IUPAC ambiguity codes to N.
    No special tokens are added unless `add_sep_token` (Caduceus appends [SEP]) or `add_cls_token` is set.
    """

    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        unknown: str = "error",
        add_cls_token: bool = False,
        add_sep_token: bool = False,
        model_max_length: int = 131072,
        padding_side: str = "right",
        **kwargs,
    ):
        if unknown not in ("error", "N"):
            raise ValueError(f"unknown must be 'error' or 'N', got {unknown!r}")
        self.unknown = unknown
        self.add_cls_token = add_cls_token
        self.add_sep_token = add_sep_token
        self._vocab = dict(VOCAB)
        self._ids_to_tokens = {i: t for t, i in self._vocab.items()}
        for key, tok in dict(
            cls_token="[CLS]", sep_token="[SEP]", bos_token="[BOS]", mask_token="[MASK]",
            pad_token="[PAD]", unk_token="[UNK]",
        ).items():
            kwargs.setdefault(key, tok)
        super().__init__(
            unknown=unknown,
            add_cls_token=add_cls_token,
            add_sep_token=add_sep_token,
            model_max_length=model_max_length,
            padding_side=padding_side,
            **kwargs,
        )

    # --- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    @property
    def complement_map(self) -> torch.Tensor:
        """(16,) long tensor over the padded vocabulary: comp[id]."""
        return _COMP_TENSOR.clone()

    # --- string <-> tokens ------------------------------------------------------------------------
    def _tokenize(self, text: str, **kwargs) -> list[str]:
        ids = encode_dna(text.strip(), self.unknown)
        return [self._ids_to_tokens[int(i)] for i in ids]

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._vocab:
            return self._vocab[token]
        return encode_dna(token, self.unknown)[0].item() if len(token) == 1 else UNK_ID

    def _convert_id_to_token(self, index: int) -> str:
        return self._ids_to_tokens.get(int(index), "[UNK]")

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return "".join(t for t in tokens if t in BASES or t == "[MASK]").replace("[MASK]", "-")

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        out = ([CLS_ID] if self.add_cls_token else []) + list(token_ids_0)
        if token_ids_1 is not None:
            out += ([SEP_ID] if self.add_sep_token else []) + list(token_ids_1)
        return out + ([SEP_ID] if self.add_sep_token else [])

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return [1 if t < len(SPECIAL_TOKENS) else 0 for t in token_ids_0]
        n = len(token_ids_0) + (len(token_ids_1) if token_ids_1 is not None else 0)
        return [1 if t < len(SPECIAL_TOKENS) else 0 for t in self.build_inputs_with_special_tokens(
            [A_ID] * len(token_ids_0), None if token_ids_1 is None else [A_ID] * len(token_ids_1))][: n + 3]

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    # --- fast paths used by the library -----------------------------------------------------------
    def encode_dna(self, seq: str) -> np.ndarray:
        return encode_dna(seq, self.unknown)

    def decode_dna(self, ids) -> str:
        return decode_dna(ids)

    def rc(self, x):
        """Reverse complement: a string (case kept), or an id tensor of shape (..., L) (batched)."""
        if isinstance(x, str):
            return rc_string(x)
        if isinstance(x, torch.Tensor):
            return rc_ids(x)
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
            return [rc_string(s) for s in x]
        return rc_ids(torch.as_tensor(x)).tolist()

    # --- persistence ------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.json")
        with open(path, "w") as fh:
            json.dump(self._vocab, fh, indent=1)
        return (path,)
