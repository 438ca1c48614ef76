"""Corpus parsing and the held-out split, on a small fake Debian tree built in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from wdmoe.train.data import (
    DOC_MARKER,
    CorpusError,
    Document,
    is_heldout,
    parse_fortunes,
    parse_jargon,
    prepare_corpus,
    read_documents,
    split_documents,
)

FORTUNES = "A fortune.\n\t\t-- Someone\n%\nTwo lines,\nof wisdom.\n%\n%\n  Last one, no trailing separator.\n"
JARGON = """\
                                The Jargon File

   Table of Contents

   Glossary

  A

   abbrev

   :abbrev: /*-breev'/, /*-brev'/, n.

   Common abbreviation for abbreviation.

   :ACK: /ak/, interj.

   1. [common; from the ASCII mnemonic for 0000110] Acknowledge.

   2. [from the comic strip Bloom County] An exclamation of surprised disgust.

  B

   :bar: /bar/, n.

   [very common] The second metasyntactic variable, after {foo}.

                             Part\u00a0III.\u00a0Appendices

   Table of Contents
"""


def fake_tree(root: Path) -> tuple[Path, Path]:
    fortunes = root / "fortunes"
    (fortunes / "off").mkdir(parents=True)
    (fortunes / "computers").write_text(FORTUNES, encoding="utf-8")
    (fortunes / "computers.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    (fortunes / "computers.u8").symlink_to("computers")
    (fortunes / "wisdom").write_text("Know thyself.\n%\nA fortune.\n\t\t-- Someone\n%\n", encoding="utf-8")
    (fortunes / "off" / "rude").write_text("Offensive text.\n%\n", encoding="utf-8")
    jargon = root / "jargon.txt.gz"
    jargon.write_bytes(gzip.compress(JARGON.encode("utf-8")))
    return fortunes, jargon


def test_parse_fortunes_splits_on_percent_lines_and_drops_empty_ones() -> None:
    assert parse_fortunes(FORTUNES) == [
        "A fortune.\n\t\t-- Someone",
        "Two lines,\nof wisdom.",
        "  Last one, no trailing separator.",
    ]


def test_parse_jargon_keeps_lexicon_entries_only() -> None:
    docs = parse_jargon(JARGON)

    heads = [doc.splitlines()[0] for doc in docs]
    assert heads == [":abbrev: /*-breev'/, /*-brev'/, n.", ":ACK: /ak/, interj.", ":bar: /bar/, n."]
    assert docs[1].endswith("An exclamation of surprised disgust.")
    assert docs[2] == ":bar: /bar/, n.\n\n[very common] The second metasyntactic variable, after {foo}."


def test_prepare_corpus_reads_plain_collections_and_jargon_and_writes_both_files(tmp_path: Path) -> None:
    fortunes, jargon = fake_tree(tmp_path / "src")

    info = prepare_corpus(tmp_path / "out", fortunes, jargon, heldout_fraction=0.3)

    train = read_documents(tmp_path / "out" / "train.txt")
    heldout = read_documents(tmp_path / "out" / "heldout.txt")
    texts = sorted(train + heldout)
    expected = sorted([*parse_fortunes(FORTUNES), "Know thyself.", *parse_jargon(JARGON)])  # duplicate fortune once
    assert texts == expected
    assert not any("Offensive" in t or "binary" in t for t in texts)
    assert (info.train_documents, info.heldout_documents, info.duplicates_dropped) == (len(train), len(heldout), 1)
    assert info.train_characters == sum(map(len, train))
    on_disk = json.loads((tmp_path / "out" / "corpus.json").read_text())
    assert on_disk["train_sha256"] == hashlib.sha256((tmp_path / "out" / "train.txt").read_bytes()).hexdigest()
    assert on_disk["heldout_sha256"] == hashlib.sha256((tmp_path / "out" / "heldout.txt").read_bytes()).hexdigest()
    assert [s["documents"] for s in on_disk["sources"]] == [4, 3]
    assert (tmp_path / "out" / "train.txt").read_text().count(f"\n\n{DOC_MARKER}\n") == len(train)


def test_heldout_split_is_deterministic_disjoint_and_near_the_fraction() -> None:
    docs = [Document(f"fortune number {i}", "fortunes/x") for i in range(4000)]

    first, again = split_documents(docs, 0.05), split_documents(list(reversed(docs)), 0.05)

    assert {d.text for d in first.heldout} == {d.text for d in again.heldout}
    assert not {d.text for d in first.train} & {d.text for d in first.heldout}
    assert len(first.train) + len(first.heldout) == len(docs)
    assert 0.04 < len(first.heldout) / len(docs) < 0.06  # binomial(4000, 0.05): sd 0.0034
    assert all(is_heldout(d.text, 0.05) for d in first.heldout)


def test_missing_sources_name_the_package_and_the_install_command(tmp_path: Path) -> None:
    fortunes, jargon = fake_tree(tmp_path)

    with pytest.raises(CorpusError, match=r"fortunes-min \(apt-get install -y fortunes fortunes-min\)"):
        prepare_corpus(tmp_path / "out", tmp_path / "nowhere", jargon)
    with pytest.raises(CorpusError, match=r"jargon-text \(apt-get install -y jargon-text\)"):
        prepare_corpus(tmp_path / "out", fortunes, tmp_path / "nowhere.txt.gz")
