"""Every command the README or a `--help` shows is a test: each one runs, in order, in a sandbox holding the files
the examples name.

The commands are read from README.md's bash blocks and from each verb's `--help` epilog at test time, so a new
example is tested as soon as it is written. The sandbox files are small and shaped like the examples promise: a
genome with a `chr20` record long enough for the examples' regions, E. coli
from ../shared/data, labelled tables and FASTA files. Each command runs as written, with budget flags appended
(`--set`/`--max-steps`/... that shrink models and step counts), because the examples describe real runs of minutes
to hours; everything else — flags, recipes, data files, model directories from earlier commands — is the
documented command's own. A command whose data is missing (the Genomic Benchmarks tasks without ../shared) skips.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ECOLI, GB_SEQUENCES, ROOT

from dna_mdlm.cli import build_parser, main

# Budget flags appended per verb: tiny models, a few steps, few windows.
BUDGET = {
    "pretrain": ["--max-steps", "3", "--set", "model.d_model=8", "--set", "model.n_layer=1", "--set", "data.window=128",
                 "--set", "data.batch_size=2", "--set", "data.max_val_windows=4", "--set", "trainer.val_every=3",
                 "--set", "trainer.progress_bar=false"],
    "finetune": ["--max-train", "60", "--set", "epochs=1"],
    "sample": ["--steps", "4"],
    "likelihood": ["--max-windows", "4"],
    "evaluate-samples": ["--no-motifs"],
}
NEEDS_SHARED = {"ecoli.fa.gz": ECOLI, "--task": GB_SEQUENCES}
SKIPPED_OUTPUTS: set[str] = set()  # --out of commands skipped for missing shared data (run in order)
RNG = np.random.default_rng(11)


def _dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every `dna-mdlm ...` line of README.md's bash blocks and of every verb's --help."""
    out = []
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("dna-mdlm "):
                out.append(("README.md", line))
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for verb, sub in verbs.items():
        for line in (sub.epilog or "").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("dna-mdlm "):
                out.append((f"dna-mdlm {verb} --help", line))
    return out


def _write_fasta(path: Path, records: dict[str, str]) -> None:
    text = "".join(f">{k}\n" + "\n".join(v[i:i + 60] for i in range(0, len(v), 60)) + "\n" for k, v in records.items())
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), compresslevel=1))
    else:
        path.write_text(text)


def _inputs(root: Path) -> None:
    """The files the examples name: a `chr20` record long enough for the examples' regions, held-out sets, reads,
    labelled tables, a motif file and a VCF on chr20."""
    chr20 = _dna(2_500_000)
    genome = {"chr20": chr20}
    for name in ("hg38.fa.gz", "hg38.fa", "genome.fa"):
        _write_fasta(root / name, genome)
    _write_fasta(root / "heldout.fa", {"h": _dna(400_000)})
    _write_fasta(root / "train.fa", {"t": _dna(50_000)})
    for name in ("reads.fa", "regions.fa", "new.fa", "candidates.fa"):
        _write_fasta(root / name, {f"r{i}": _dna(150 + 10 * i) for i in range(6)})
    _write_fasta(root / "designed.fa", {f"d{i}": _dna(300) for i in range(20)})
    _write_fasta(root / "real_promoters.fa", {f"p{i}": _dna(300) for i in range(30)})
    rows = "".join(f"{_dna(120 + i)}\t{i % 2}\n" for i in range(80))
    (root / "labelled.tsv").write_text("seq\tlabel\n" + rows)
    (root / "train.csv").write_text("seq,label\n" + rows.replace("\t", ","))
    # Two kinds of 100-bp sequence (fits the budget's 128-bp window) for the class-conditional examples.
    (root / "promoters.csv").write_text("seq,label\n" + "".join(
        f"{_dna(100)},{'promoter' if i % 2 else 'background'}\n" for i in range(40)))
    (root / "test.csv").write_text("seq,label\n" + "".join(f"{_dna(120)},{i % 2}\n" for i in range(20)))
    (root / "JASPAR_core.txt").write_text((ROOT / "tests" / "data" / "MA0139.1_CTCF.jaspar").read_text())
    (root / "calls.vcf.gz").write_bytes(gzip.compress(
        ("##fileformat=VCFv4.2\n##contig=<ID=chr20,length=2500000>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
         + "".join(f"chr20\t{1_000_100 + 37 * i}\t.\t{chr20[1_000_099 + 37 * i]}\t"
                   f"{'C' if chr20[1_000_099 + 37 * i] != 'C' else 'G'}\t.\tPASS\t.\n" for i in range(5))).encode()))
    if ECOLI.is_file():
        os.symlink(ECOLI, root / "ecoli.fa.gz")
    os.symlink(ROOT / "dna_mdlm", root / "dna_mdlm")  # the bundled files the score-variants examples name


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory):
    """Two working folders over the same inputs: the README's commands form one session, the --help examples
    another (both name runs/ar, for instance), each run in the order written."""
    inputs = tmp_path_factory.mktemp("inputs")
    _inputs(inputs)
    out = {}
    for name in ("readme", "help"):
        folder = tmp_path_factory.mktemp(name)
        for f in inputs.iterdir():
            os.symlink(f.resolve() if not f.is_symlink() else os.readlink(f), folder / f.name)
        out[name] = folder
    return out


COMMANDS = documented_commands()


def test_there_are_documented_commands_for_every_verb():
    verbs = {shlex.split(c)[1] for _, c in COMMANDS}
    parser = build_parser()
    all_verbs = set(next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices)
    assert verbs == all_verbs, all_verbs - verbs


@pytest.mark.slow
@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{i:02d}" for i in range(len(COMMANDS))])
def test_documented_command_runs(sandboxes, where, command, monkeypatch, capsys):
    sandbox = sandboxes["readme" if where == "README.md" else "help"]
    argv = shlex.split(command)[1:]
    verb = argv[0]
    for token, path in NEEDS_SHARED.items():
        if token in argv and not path.exists():
            if "--out" in argv:  # what it would have written is missing for the commands that read it
                SKIPPED_OUTPUTS.add(argv[argv.index("--out") + 1])
            pytest.skip(f"{where}: needs {path} (../shared/data)")
    missing = [a for a in argv if any(a == o or a.startswith(o.rstrip("/") + "/") for o in SKIPPED_OUTPUTS)]
    if missing:
        pytest.skip(f"{where}: reads {missing[0]}, the output of a documented command skipped for missing ../shared/data")
    budget = list(BUDGET.get(verb, []))
    if verb == "pretrain" and "--resume" in argv:
        budget = ["--max-steps", "6"]  # a resumed run may only extend its budget
    elif verb == "pretrain" and "--init" in argv:  # the architecture is the init model's
        budget = [x for pair in zip(budget[::2], budget[1::2]) if not pair[1].startswith("model.") for x in pair]
    elif verb == "pretrain" and "markov" in argv:  # counted, not trained: no budget to shrink
        budget = []
    if verb == "pretrain" and "--window" in argv:  # the command's own window; a flag and a --set may not disagree
        budget = [x for pair in zip(budget[::2], budget[1::2]) if pair[1] != "data.window=128" for x in pair]
    if verb == "finetune" and "--task" in argv and "--folds" not in argv:
        budget += ["--folds", "2"]
    # In-process (as the console script runs it, minus the interpreter start-up), in the sandbox folder.
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("DNA_MDLM_SHARED_DATA", str(GB_SEQUENCES.parents[1]))
    rc = main([*argv, *budget])
    err = capsys.readouterr().err
    assert rc == 0, f"{where}: {command}\n{err[-3000:]}"
