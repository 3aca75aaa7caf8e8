"""Where the files of ``search_spaces/`` are, in a checkout and in an installed wheel alike.

``search_spaces`` is the repository's top-level folder of specs and the paper's numbers. It has
no ``__init__.py``: pyproject.toml ships it as the data of a namespace package, so a wheel puts
it in site-packages beside ``service`` and an editable install maps the name to the checkout's
folder. Python finds it either way; this module turns that into a plain folder on disk.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PACKAGE = "search_spaces"


def search_spaces_folder(*parts: str) -> Path:
    """The folder ``search_spaces/<parts...>`` as installed (``FileNotFoundError`` if absent).

    A namespace package may have several portions (another ``search_spaces/`` folder in the
    working directory, say): the first that holds ``parts`` is the one.
    """
    try:
        portions = list(importlib.import_module(PACKAGE).__path__)
    except ModuleNotFoundError:
        portions = []
    for portion in portions:
        folder = Path(portion, *parts)
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"{'/'.join((PACKAGE, *parts))} is not installed (looked in {portions or 'nothing'}): "
        "reinstall dmsweep (pip install .)"
    )
