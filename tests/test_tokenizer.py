"""DNATokenizer: vocabulary, soft-masking, rc(), errors, save/load."""

import pytest
import torch

from dna_mdlm.tokenizer import (
    MASK_ID,
    N_ID,
    PAD_ID,
    DNATokenizer,
    InvalidSequenceError,
    complement_map,
    decode_dna,
    encode_dna,
    rc_ids,
    rc_string,
)


def test_vocabulary_matches_caduceus():
    tok = DNATokenizer()
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N"]] == list(range(12))
    comp = complement_map()
    assert len(comp) == 16 and comp[7] == 10 and comp[8] == 9 and comp[9] == 8 and comp[10] == 7
    assert all(comp[i] == i for i in list(range(7)) + list(range(11, 16)))
    assert torch.equal(tok.complement_map, torch.tensor(comp))


def test_encode_uppercases_and_adds_no_special_tokens():
    tok = DNATokenizer()
    assert tok("acgtN")["input_ids"] == [7, 8, 9, 10, 11]
    assert tok("ACGT", add_special_tokens=True)["input_ids"] == [7, 8, 9, 10]
    assert DNATokenizer(add_sep_token=True)("AC")["input_ids"] == [7, 8, 1]
    assert list(encode_dna("gattaca")) == [9, 7, 10, 10, 7, 8, 7]
    assert decode_dna(encode_dna("GATTACAN")) == "GATTACAN"


def test_invalid_characters_error_or_map_to_n():
    with pytest.raises(InvalidSequenceError, match=r"invalid character 'R' at position 2"):
        DNATokenizer()("ACRT")
    assert DNATokenizer(unknown="N")("ACRy")["input_ids"] == [7, 8, N_ID, N_ID]
    with pytest.raises(InvalidSequenceError, match="position 1"):
        encode_dna("A!", unknown="N")  # not an IUPAC code: still an error


def test_rc_strings_and_batched_ids():
    tok = DNATokenizer()
    assert tok.rc("AACGTn") == "nACGTT"
    assert rc_string(rc_string("GATTACA")) == "GATTACA"
    ids = torch.tensor([[7, 8, 9, MASK_ID, N_ID], [10, 10, PAD_ID, 7, 8]])
    out = tok.rc(ids)
    assert out.tolist() == [[N_ID, MASK_ID, 8, 9, 10], [9, 10, PAD_ID, 7, 7]]
    assert torch.equal(rc_ids(rc_ids(ids)), ids)
    # rc of the ids equals the ids of the rc string
    s = "ACGGTTNCA"
    assert rc_ids(torch.tensor(encode_dna(s))).tolist() == list(encode_dna(rc_string(s)))


def test_save_and_load_round_trip(tmp_path):
    tok = DNATokenizer(unknown="N", add_sep_token=True)
    tok.save_pretrained(tmp_path)
    back = DNATokenizer.from_pretrained(tmp_path)
    assert back.unknown == "N" and back.add_sep_token
    assert back("acgr")["input_ids"] == tok("acgr")["input_ids"] == [7, 8, 9, N_ID, 1]
    assert back.decode([7, 8, MASK_ID]) == "AC-"
    assert (tmp_path / "vocab.json").is_file()
