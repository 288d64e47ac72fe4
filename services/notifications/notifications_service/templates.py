"""Jinja2 templates (subject, text, HTML) per name and locale, rendered in a sandbox.

Templates are package files `templates/<name>/<locale>/{subject.txt,body.txt,body.html}`;
a locale without its own files falls back to the default one. Only these files are ever
compiled: user-supplied data is passed as values, so it cannot run template code.
`StrictUndefined` makes a missing value an error recorded on the notification.
The files are part of the installed package, so each is compiled once and the file
lookups are remembered: a render touches no file.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["TEMPLATE_DIR", "RenderError", "Rendered", "TemplateRenderer"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
_LOCALE = re.compile(r"^[a-z]{2}(-[A-Z]{2})?$")


class RenderError(ValueError):
    """The template is unknown, or failed with the data it was given."""


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None


class TemplateRenderer:
    def __init__(self, directory: Path = TEMPLATE_DIR, *, default_locale: str = "en") -> None:
        self.directory = directory
        self.default_locale = default_locale
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(directory),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self.exists = functools.lru_cache(maxsize=256)(self._exists)
        self._files = functools.lru_cache(maxsize=1024)(self._find_files)

    def _exists(self, name: str) -> bool:
        return bool(_NAME.match(name)) and (self.directory / name / self.default_locale).is_dir()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if self.exists(p.name))

    def render(self, name: str, context: dict[str, Any], *, locale: str | None = None) -> Rendered:
        if not self.exists(name):
            raise RenderError(f"unknown template {name!r}")
        try:
            subject_template, text_template, html_template = self._files(name, locale)
            subject = subject_template.render(context).strip()
            text = text_template.render(context)
            html = html_template.render(context) if html_template is not None else None
        except TemplateError as exc:
            raise RenderError(f"template {name!r}: {type(exc).__name__}: {exc}"[:400]) from None
        return Rendered(subject=" ".join(subject.split()), text=text, html=html)

    def _find_files(
        self, name: str, locale: str | None
    ) -> tuple[Template, Template, Template | None]:
        """The compiled subject, text and HTML (if any) of the template in this locale."""
        folder = self._locale_folder(name, locale)
        html = (self.directory / name / folder / "body.html").is_file()
        return (
            self.env.get_template(f"{name}/{folder}/subject.txt"),
            self.env.get_template(f"{name}/{folder}/body.txt"),
            self.env.get_template(f"{name}/{folder}/body.html") if html else None,
        )

    def _locale_folder(self, name: str, locale: str | None) -> str:
        for candidate in (locale, (locale or "").split("-")[0]):
            if (
                candidate
                and _LOCALE.match(candidate)
                and (self.directory / name / candidate).is_dir()
            ):
                return candidate
        return self.default_locale
