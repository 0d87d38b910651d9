"""A small report builder that writes the same content as Markdown and as standalone HTML.

Figures are linked by paths relative to the report, so the folder can be moved or zipped whole.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Report:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", list(header), [[cell(v) for v in r] for r in rows]))

    def image(self, path: str | Path, caption: str) -> None:
        self.blocks.append(("image", Path(path), caption))

    @staticmethod
    def link(path: Path, root: Path) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    def markdown(self, root: Path) -> str:
        lines = [f"# {self.title}", ""]
        for kind, *args in self.blocks:
            if kind == "heading":
                lines += [f"## {args[0]}", ""]
            elif kind == "text":
                lines += [args[0], ""]
            elif kind == "table":
                header, rows = args
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
            else:
                path, caption = args
                lines += [f"![{caption}]({self.link(path, root)})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self, root: Path) -> str:
        e = html.escape
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style>",
                 f"</head><body><h1>{e(self.title)}</h1>"]
        for kind, *args in self.blocks:
            if kind == "heading":
                parts.append(f"<h2>{e(args[0])}</h2>")
            elif kind == "text":
                parts.append(f"<p>{e(args[0])}</p>")
            elif kind == "table":
                header, rows = args
                parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in rows]
                parts.append("</table>")
            else:
                path, caption = args
                src = e(self.link(path, root))
                parts.append(f"<figure><a href='{src}'><img src='{src}' alt='{e(caption)}'></a>"
                             f"<figcaption>{e(caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write `<stem>.md` and `<stem>.html` into `out_dir` (where the figures should live)."""
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        md, page = root / f"{stem}.md", root / f"{stem}.html"
        md.write_text(self.markdown(root))
        page.write_text(self.html(root))
        return md, page
