"""``docs``: print a page of the documentation, from the installed package or the checkout alike.

The pages are the repository's ``docs/*.md``; ``slotref/docs`` links to that folder, so a checkout reads
them in place and a wheel carries them as package data (setup.cfg). The commands point to a page as
``slotref docs NAME``.
"""

from __future__ import annotations

import re
from importlib import resources

import click


def pages() -> dict[str, object]:
    """name -> the page (an ``importlib.resources`` traversable), for every docs/*.md the package holds."""
    folder = resources.files("slotref") / "docs"
    if not folder.is_dir():
        return {}
    return {p.name[:-3]: p for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".md")}


def page_name(name: str) -> str:
    """``curriculum``, ``curriculum.md`` and ``docs/curriculum.md`` all name the page ``curriculum``."""
    name = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-3] if name.endswith(".md") else name


def title(text: str) -> str:
    """A page's first heading, without the ``#``."""
    match = re.search(r"^#+\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else ""


@click.command(name="docs")
@click.argument("name", required=False)
@click.option("--path", "show_path", is_flag=True, help="Print where the page is on disk instead of its text.")
def docs(name, show_path):
    """Print a page of the documentation (NAME: curriculum, results, scale, ...); without NAME, list them.

    Every page the commands point to (`slotref docs curriculum`) is installed with the package."""
    found = pages()
    if not found:
        raise click.ClickException("this installation holds no documentation pages (slotref/docs is missing)")
    if name is None:
        width = max(map(len, found))
        for key, page in found.items():
            click.echo(f"{key:<{width}}  {title(page.read_text(encoding='utf-8'))}")
        click.echo("\nslotref docs NAME prints one.")
        return
    key = page_name(name)
    if key not in found:
        raise click.UsageError(f"no page {name!r}; the pages are: {', '.join(found)}")
    if show_path:
        click.echo(str(found[key]))
        return
    click.echo(found[key].read_text(encoding="utf-8"), nl=False)
