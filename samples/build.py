"""Regenerate the sample story in samples/{txt,epub,pdf}/ from SQuALITY's training split.

The sample is the shortest story in ``../shared/data/squality/train.jsonl`` (a Project Gutenberg
science-fiction story), split into three numbered parts at paragraph boundaries so that the readers'
chapter handling has something to find. Only the story is written: never the SQuALITY summaries.

    python samples/build.py [path/to/train.jsonl]

Needs ebooklib (a dependency of infsum) and reportlab (a development tool only: pip install reportlab).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1] / "shared" / "data" / "squality" / "train.jsonl"
PARTS = ("I", "II", "III")


def shortest_story(source: Path) -> dict:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    return min(rows, key=lambda r: len(r["document"].split()))


SMALL_WORDS = {"a", "an", "and", "at", "for", "in", "of", "on", "the", "to"}


def headline_case(text: str) -> str:
    """ "IN THE GARDEN" -> "In the Garden"."""
    words = text.lower().split()
    return " ".join(w if i and w in SMALL_WORDS else w.capitalize() for i, w in enumerate(words))


def story_parts(document: str) -> tuple[str, str, list[list[str]]]:
    """Title, author and the story's paragraphs in three parts (the blurb and transcriber's note dropped)."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", document) if p.strip()]
    title_at = next(
        i for i, p in enumerate(paras) if p.isupper() and not p.endswith((".", ",")) and len(p.split()) <= 6
    )
    title = headline_case(paras[title_at])
    author = re.sub(r"^BY\s+", "", paras[title_at + 1], flags=re.I).title()
    body = paras[title_at + 2 :]
    if body[0].startswith("[Transcriber"):
        body = body[1:]
    size = -(-len(body) // len(PARTS))
    return title, author, [body[i : i + size] for i in range(0, len(body), size)]


def attribution(passage_id: str) -> str:
    return (
        f"From Project Gutenberg eBook #{passage_id} (https://www.gutenberg.org/ebooks/{passage_id}); "
        "public domain in the USA."
    )


def write_txt(path: Path, title: str, author: str, parts: list[list[str]], note: str) -> None:
    chunks = [title, f"by {author}", note]
    for name, paras in zip(PARTS, parts, strict=True):
        chunks += [name, *paras]
    path.write_text("\n\n".join(chunks) + "\n", encoding="utf-8")


def write_epub(path: Path, title: str, author: str, parts: list[list[str]], note: str, uid: str) -> None:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier(f"squality-{uid}")
    book.set_title(title)
    book.set_language("en")
    book.add_author(author)
    chapters = []
    for i, (name, paras) in enumerate(zip(PARTS, parts, strict=True), 1):
        ch = epub.EpubHtml(title=name, file_name=f"part-{i}.xhtml", lang="en")
        ch.content = f"<h2>{name}</h2>" + "".join(f"<p>{escape(p)}</p>" for p in paras)
        chapters.append(ch)
    colophon = epub.EpubHtml(title="Colophon", file_name="colophon.xhtml", lang="en")
    colophon.content = f'<section epub:type="colophon"><p>{escape(note)}</p></section>'
    for item in (*chapters, colophon):
        book.add_item(item)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters, colophon]
    epub.write_epub(str(path), book)


def write_pdf(path: Path, title: str, author: str, parts: list[list[str]], note: str) -> None:
    from reportlab.lib.pagesizes import A5
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

    styles = getSampleStyleSheet()

    def furniture(canvas, doc) -> None:  # a running head and a page number on every page
        canvas.saveState()
        canvas.setFont("Times-Italic", 8)
        canvas.drawCentredString(A5[0] / 2, A5[1] - 28, f"{author} \u2014 {title}")
        canvas.setFont("Times-Roman", 9)
        canvas.drawCentredString(A5[0] / 2, 24, str(doc.page))
        canvas.restoreState()

    flow = [Paragraph(escape(title), styles["Title"]), Paragraph(f"by {escape(author)}", styles["Heading3"])]
    flow += [Paragraph(escape(note), styles["Italic"]), Spacer(1, 12)]
    for name, paras in zip(PARTS, parts, strict=True):
        flow.append(Paragraph(name, styles["Heading2"]))
        flow += [Paragraph(escape(p), styles["BodyText"]) for p in paras]
    doc = SimpleDocTemplate(str(path), pagesize=A5, title=title, author=author, topMargin=48, bottomMargin=48)
    doc.build(flow, onFirstPage=furniture, onLaterPages=furniture)


def main(source: Path = DEFAULT_SOURCE) -> None:
    row = shortest_story(source)
    title, author, parts = story_parts(row["document"])
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    note = attribution(row["metadata"]["passage_id"])
    for kind in ("txt", "epub", "pdf"):
        (HERE / kind).mkdir(exist_ok=True)
    write_txt(HERE / "txt" / f"{slug}.txt", title, author, parts, note)
    write_epub(HERE / "epub" / f"{slug}.epub", title, author, parts, note, row["metadata"]["uid"])
    write_pdf(HERE / "pdf" / f"{slug}.pdf", title, author, parts, note)
    words = sum(len(p.split()) for part in parts for p in part)
    print(f"{slug}: {words} words, SQuALITY uid {row['metadata']['uid']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
