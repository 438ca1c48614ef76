"""Training data, stage 1 of the training pipeline: offline text -> documents -> a deterministic train/held-out split.

Contract: `prepare_corpus(out_dir)` reads only local Debian packages (`fortunes`, `fortunes-min`, `jargon-text`),
parses them into documents (one fortune, one Jargon File lexicon entry), drops exact duplicates, assigns each
document to the held-out set by a hash of its text (the same document always lands on the same side, whatever else
the corpus holds), and writes `train.txt`, `heldout.txt` and `corpus.json`. Binary `.dat` index files, the `.u8`
symlinks (duplicates of the plain files) and the offensive collection (`off/`) are never read.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from wdmoe.atomic import write_bytes_atomic, write_json_atomic
from wdmoe.errors import WdmoeError

FORTUNE_DIR = Path("/usr/share/games/fortunes")
JARGON_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
# A document never contains this line; each document in train.txt / heldout.txt is followed by it.
DOC_MARKER = "<|endofdoc|>"
DOC_END = f"\n\n{DOC_MARKER}\n"
HELDOUT_FRACTION = 0.05
_OFFENSIVE_DIR = "off"
_JARGON_ENTRY = re.compile(r"^   :[^:\n]+:")  # "   :crumb: n." opens a lexicon entry
# A letter heading ("  C"), a chapter/appendix heading, or the centered "Part III. Appendices".
_JARGON_SECTION = re.compile(r"^(?:  [0-9A-Z]$|\S|\s+Part\s[IVX]+\.\s)")


class CorpusError(WdmoeError):
    """A training-text source is missing or holds no documents."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # "fortunes/computers", "jargon"


@dataclass(frozen=True)
class SourceStats:
    name: str
    package: str
    path: str
    documents: int
    characters: int


@dataclass(frozen=True)
class CorpusInfo:
    train_documents: int
    train_characters: int
    heldout_documents: int
    heldout_characters: int
    heldout_fraction: float  # the target share of documents; the realized share follows from the hashes
    duplicates_dropped: int
    train_sha256: str
    heldout_sha256: str
    marker: str
    sources: tuple[SourceStats, ...]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def parse_fortunes(text: str) -> list[str]:
    """Split a fortune file into fortunes: a line holding only `%` ends one."""
    docs: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip() == "%":
            docs.append("\n".join(current))
            current = []
        else:
            current.append(line.rstrip())
    docs.append("\n".join(current))
    return [doc.strip("\n") for doc in docs if doc.strip()]


def parse_jargon(text: str) -> list[str]:
    """The lexicon entries of the plain-text Jargon File: from a `   :term:` line to the next entry or heading."""
    docs: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if _JARGON_ENTRY.match(line) or _JARGON_SECTION.match(line):
            if current is not None:
                docs.append(textwrap.dedent("\n".join(current)).strip())
            current = [line.rstrip()] if _JARGON_ENTRY.match(line) else None
        elif current is not None:
            current.append(line.rstrip())
    if current is not None:
        docs.append(textwrap.dedent("\n".join(current)).strip())
    return [doc for doc in docs if doc]


def fortune_files(directory: Path) -> list[Path]:
    """The plain fortune collections of `directory`, sorted: no `.dat` index, no `.u8` symlink, no `off/`."""
    if not directory.is_dir():
        raise CorpusError(
            f"fortune directory {directory} does not exist: install the Debian packages fortunes and fortunes-min "
            "(apt-get install -y fortunes fortunes-min)"
        )
    return sorted(
        path for path in directory.iterdir()
        if path.is_file() and not path.is_symlink() and path.suffix != ".dat" and path.name != _OFFENSIVE_DIR
    )


def read_jargon(path: Path) -> str:
    if not path.is_file():
        raise CorpusError(
            f"Jargon File {path} does not exist: install the Debian package jargon-text "
            "(apt-get install -y jargon-text)"
        )
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")


def collect_documents(fortune_dir: Path = FORTUNE_DIR, jargon_file: Path = JARGON_FILE) -> list[Document]:
    """Every document of every source, in a fixed order (files sorted by name, then the lexicon)."""
    docs: list[Document] = []
    for path in fortune_files(fortune_dir):
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.extend(Document(doc, f"fortunes/{path.name}") for doc in parse_fortunes(text))
    docs.extend(Document(doc, "jargon") for doc in parse_jargon(read_jargon(jargon_file)))
    if not docs:
        raise CorpusError(f"no documents found in {fortune_dir} and {jargon_file}")
    return docs


def is_heldout(text: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Held out iff the first 8 bytes of sha256(text), as a fraction of 2**64, fall below `fraction`."""
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return value < fraction * 2**64


@dataclass(frozen=True)
class Split:
    train: list[Document]
    heldout: list[Document]


def split_documents(docs: list[Document], fraction: float = HELDOUT_FRACTION) -> Split:
    """Train and held-out documents, each in input order; a document's side depends on its text alone."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"heldout_fraction = {fraction}: must lie strictly between 0 and 1")
    train = [doc for doc in docs if not is_heldout(doc.text, fraction)]
    heldout = [doc for doc in docs if is_heldout(doc.text, fraction)]
    return Split(train, heldout)


def dedupe(docs: list[Document]) -> list[Document]:
    """Keep the first occurrence of each text (the same fortune ships in several collections)."""
    seen: set[str] = set()
    kept = []
    for doc in docs:
        if doc.text not in seen:
            seen.add(doc.text)
            kept.append(doc)
    return kept


def join_documents(texts: list[str]) -> str:
    return "".join(text + DOC_END for text in texts)


def read_documents(path: Path) -> list[str]:
    """The documents of a `train.txt` / `heldout.txt` written by `prepare_corpus`."""
    text = path.read_text(encoding="utf-8")
    return [doc for doc in text.split(DOC_END) if doc]


def prepare_corpus(
    out_dir: Path,
    fortune_dir: Path = FORTUNE_DIR,
    jargon_file: Path = JARGON_FILE,
    heldout_fraction: float = HELDOUT_FRACTION,
) -> CorpusInfo:
    """Write `train.txt`, `heldout.txt` and `corpus.json` into `out_dir`; return what `corpus.json` holds."""
    all_docs = collect_documents(fortune_dir, jargon_file)
    docs = dedupe(all_docs)
    split = split_documents(docs, heldout_fraction)
    train, heldout = split.train, split.heldout
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, part in (("train.txt", train), ("heldout.txt", heldout)):
        data = join_documents([doc.text for doc in part]).encode("utf-8")
        write_bytes_atomic(out_dir / name, data)
        digests[name] = hashlib.sha256(data).hexdigest()
    info = CorpusInfo(
        train_documents=len(train),
        train_characters=sum(len(doc.text) for doc in train),
        heldout_documents=len(heldout),
        heldout_characters=sum(len(doc.text) for doc in heldout),
        heldout_fraction=heldout_fraction,
        duplicates_dropped=len(all_docs) - len(docs),
        train_sha256=digests["train.txt"],
        heldout_sha256=digests["heldout.txt"],
        marker=DOC_MARKER,
        sources=_source_stats(docs, fortune_dir, jargon_file),
    )
    write_json_atomic(out_dir / "corpus.json", info.to_json())
    return info


def _source_stats(docs: list[Document], fortune_dir: Path, jargon_file: Path) -> tuple[SourceStats, ...]:
    fortunes = [doc for doc in docs if doc.source.startswith("fortunes/")]
    jargon = [doc for doc in docs if doc.source == "jargon"]
    return (
        SourceStats("fortunes", "fortunes, fortunes-min", str(fortune_dir), len(fortunes),
                    sum(len(d.text) for d in fortunes)),
        SourceStats("jargon", "jargon-text", str(jargon_file), len(jargon), sum(len(d.text) for d in jargon)),
    )
