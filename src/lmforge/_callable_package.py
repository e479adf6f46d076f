"""`from lmforge import train, finetune` names both a subpackage (lmforge.train, lmforge.finetune)
and a Python API function. Python's import system binds a subpackage to its parent's attribute
once the subpackage is loaded, so a plain function of that name in lmforge/__init__.py would be
replaced (or would break `mock.patch("lmforge.train.loop...")`-style lookups if protected).
Instead the two subpackages are callable: calling one runs the API function of the same name,
and every import path keeps working."""

from __future__ import annotations

import importlib
import sys
import types


class CallablePackage(types.ModuleType):
    """A package whose call runs `lmforge.api.<its last name component>`."""

    def __call__(self, *args, **kwargs):
        api = importlib.import_module("lmforge.api")
        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    sys.modules[module_name].__class__ = CallablePackage
