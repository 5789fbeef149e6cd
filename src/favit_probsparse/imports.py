"""Import a class named by a dotted path from a config, checkpoint or export, with one-line errors.

Files a user receives (checkpoints, exports, configs) name classes as ``package.module.Class``. Importing an
arbitrary path would run arbitrary code, so callers pass the package prefixes they accept.
"""

from __future__ import annotations

import importlib

__all__ = ["import_class"]


def import_class(
    class_path: str,
    *,
    allowed: tuple[str, ...] | None = None,
    error: type[Exception] = ValueError,
    what: str = "class",
    missing_hint: str = "does not exist in this version",
) -> type:
    """The object ``class_path`` names.

    Args:
        class_path: ``package.module.Class``.
        allowed: accepted prefixes (``("favit_probsparse.",)``); ``None`` accepts any importable path.
        error: the exception type raised (the caller's own error class).
        what: how the message names the path's owner, e.g. ``"checkpoint x.ckpt: module"``.
        missing_hint: the message's words when the module or class cannot be found.
    """
    path = str(class_path or "")
    mod_name, _, cls_name = path.rpartition(".")
    if not mod_name or not cls_name:
        raise error(f"{what} {path!r} is not a dotted path (package.module.Class)")
    if allowed is not None and not path.startswith(tuple(allowed)):
        raise error(
            f"{what} {path!r} is not part of {', '.join(p.rstrip('.') for p in allowed)}; refusing to import it"
        )
    try:
        return getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise error(f"{what} {path!r} {missing_hint} ({e})") from None
