"""Domain corpora, stage 1 of training the MoE² ensemble's experts: one text domain -> train / held-out / task text.

Contract: `prepare_domain_corpus(domain, out_dir)` reads only the local Debian packages that `wdmoe.train.data`
reads, keeps the documents of `domain` (a fixed list of fortune collections, or the Jargon File), and writes
`train.txt`, `heldout.txt` (the training loop's checkpoint selection) and `task.txt` (text no expert trains on and
no checkpoint is selected on: the source of the ensemble's multiple-choice task), plus `corpus.json`. A document's
side depends on its text alone: u = sha256(text)[:8] / 2**64; held out if u < 0.05, task text if u < 0.20, else
training text (the same rule as `data.is_heldout`, so `heldout.txt` is the shipped corpus's held-out text of this
domain). The `all` domain is the union of the others (the generalist expert).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wdmoe.atomic import write_json_atomic, write_text_atomic
from wdmoe.train.data import (
    FORTUNE_DIR,
    JARGON_FILE,
    CorpusError,
    Document,
    collect_documents,
    dedupe,
    join_documents,
)

HELDOUT_BELOW = 0.05  # u < 0.05: heldout.txt (as data.HELDOUT_FRACTION)
TASK_BELOW = 0.20  # 0.05 <= u < 0.20: task.txt


@dataclass(frozen=True)
class Domain:
    name: str
    sources: tuple[str, ...]  # Document.source values: "fortunes/<file>" or "jargon"
    description: str


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain(
            "tech",
            tuple(f"fortunes/{n}" for n in ("computers", "linux", "linuxcookie", "debian", "perl", "science")),
            "computing and science fortunes",
        ),
        Domain("jargon", ("jargon",), "Jargon File 4.4.7 lexicon entries"),
        Domain(
            "literature",
            tuple(f"fortunes/{n}" for n in ("songs-poems", "literature", "art", "humorists", "wisdom", "tao")),
            "verse, literature and wisdom",
        ),
        Domain(
            "society",
            tuple(
                f"fortunes/{n}"
                for n in (
                    "people",
                    "politics",
                    "men-women",
                    "work",
                    "law",
                    "education",
                    "medicine",
                    "sports",
                    "food",
                    "love",
                    "kids",
                    "pets",
                )
            ),
            "people, politics, work and life",
        ),
    )
}
ALL = "all"  # the union of DOMAINS


def domain_names() -> tuple[str, ...]:
    return (*DOMAINS, ALL)


def hash_fraction(text: str) -> float:
    """u = the first 8 bytes of sha256(text) as a fraction of 2**64, in [0, 1)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def domain_sources(domain: str) -> tuple[str, ...]:
    if domain == ALL:
        return tuple(source for d in DOMAINS.values() for source in d.sources)
    if domain not in DOMAINS:
        raise CorpusError(f"domain = {domain!r}: choose one of {', '.join(domain_names())}")
    return DOMAINS[domain].sources


def domain_documents(domain: str, docs: Sequence[Document]) -> list[Document]:
    """The documents of `docs` that belong to `domain`, in input order."""
    sources = set(domain_sources(domain))
    return [doc for doc in docs if doc.source in sources]


def split_three(docs: Sequence[Document]) -> dict[str, list[Document]]:
    """`train` / `heldout` / `task` documents by the hash rule of the module docstring."""
    parts: dict[str, list[Document]] = {"train": [], "heldout": [], "task": []}
    for doc in docs:
        u = hash_fraction(doc.text)
        parts["heldout" if u < HELDOUT_BELOW else "task" if u < TASK_BELOW else "train"].append(doc)
    return parts


def prepare_domain_corpus(
    domain: str, out_dir: Path, fortune_dir: Path = FORTUNE_DIR, jargon_file: Path = JARGON_FILE
) -> dict[str, int]:
    """Write the domain's `train.txt`, `heldout.txt`, `task.txt` and `corpus.json`; return documents per part."""
    docs = domain_documents(domain, dedupe(collect_documents(fortune_dir, jargon_file)))
    if not docs:
        raise CorpusError(f"domain {domain!r} holds no document: are its sources {domain_sources(domain)} installed?")
    parts = split_three(docs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        write_text_atomic(out_dir / f"{name}.txt", join_documents([d.text for d in part]))
    counts = {name: len(part) for name, part in parts.items()}
    info = {
        "domain": domain,
        "sources": list(domain_sources(domain)),
        "documents": counts,
        "characters": {name: sum(len(d.text) for d in part) for name, part in parts.items()},
    }
    write_json_atomic(out_dir / "corpus.json", info)
    return counts
