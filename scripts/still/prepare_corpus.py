"""Turn Debian's Python documentation (HTML) into a plain-text English corpus, split into train/val.

Why this corpus: it is real, edited English prose (tutorials, library reference, HOWTOs, FAQ; about
500 pages, ~10 MB of text), it installs offline from the Debian archive (``apt-get install
python3.11-doc``) and its licence (PSF) allows reuse. Code samples stay in the text, as they do in
web corpora.

The split is by page (a page goes wholly to train or to val, chosen by a hash of its path), so
validation text is never seen in training.

    python scripts/still/prepare_corpus.py --html /usr/share/doc/python3.11/html --out data/pydoc
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import re
from pathlib import Path


class _MainText(html.parser.HTMLParser):
    """Collects the text inside ``<div class="body" role="main">`` (Sphinx's page body)."""

    _BLOCK = {"p", "pre", "li", "h1", "h2", "h3", "h4", "h5", "dt", "dd", "tr", "div", "section", "blockquote"}
    _SKIP = {"script", "style"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = 0  # div depth inside the main body; 0 = outside
        self.skip = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self._SKIP:
            self.skip += 1
        if tag == "div":
            if self.depth:
                self.depth += 1
            elif attrs.get("role") == "main":
                self.depth = 1
        if self.depth and tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        if tag == "div" and self.depth:
            self.depth -= 1
        if self.depth and tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.parts.append(data)


def page_text(path: Path) -> str:
    parser = _MainText()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    text = "".join(parser.parts).replace("¶", "")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--html", type=Path, default=Path("/usr/share/doc/python3.11/html"))
    ap.add_argument("--out", type=Path, required=True, help="output folder for train.txt and val.txt")
    ap.add_argument("--val-percent", type=int, default=5, help="share of pages (by hash) that go to val")
    args = ap.parse_args()
    pages = sorted(p for p in args.html.rglob("*.html") if "_static" not in p.parts and "genindex" not in p.name)
    if not pages:
        raise SystemExit(f"no HTML pages under {args.html}; install them with: apt-get install python3.11-doc")
    args.out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for page in pages:
        text = page_text(page)
        if len(text) < 200:  # index stubs, redirects
            continue
        bucket = int(hashlib.sha1(str(page.relative_to(args.html)).encode()).hexdigest(), 16) % 100
        splits["val" if bucket < args.val_percent else "train"].append(text)
    for name, texts in splits.items():
        (args.out / f"{name}.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
        print(f"{name}: {len(texts)} pages, {sum(map(len, texts)):,} characters -> {args.out / (name + '.txt')}")


if __name__ == "__main__":
    main()
