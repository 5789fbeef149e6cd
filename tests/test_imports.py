"""import_class: the one importer of dotted class paths read from configs, checkpoints and exports."""

from __future__ import annotations

import collections

import pytest

from favit_probsparse.imports import import_class


class MyError(Exception):
    pass


def test_import_class_resolves_and_refuses():
    assert import_class("collections.OrderedDict") is collections.OrderedDict
    with pytest.raises(
        MyError, match=r"checkpoint x: module 'os.system' is not part of favit_probsparse; refusing"
    ):
        import_class("os.system", allowed=("favit_probsparse.",), error=MyError, what="checkpoint x: module")
    with pytest.raises(ValueError, match="'Informer' is not a dotted path"):
        import_class("Informer")
    with pytest.raises(ValueError, match=r"'favit_probsparse.models.Nope' does not exist in this version"):
        import_class("favit_probsparse.models.Nope", allowed=("favit_probsparse.",))
