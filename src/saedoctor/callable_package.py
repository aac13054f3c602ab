"""A subpackage that is also the public function of the same name.

`saedoctor.diagnose(...)` and `saedoctor.train(...)` are functions of the public API, and
`saedoctor/diagnose/` and `saedoctor/train/` are packages. Python's first import of a
submodule (`saedoctor.diagnose.options`, say) sets the attribute `saedoctor.diagnose` to the
package, replacing the function; so the package is made callable too, with the function's
behaviour: `saedoctor.diagnose(...)` and `from saedoctor import diagnose` then work before and
after, and dotted imports (`import saedoctor.diagnose.run`) keep working.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


class CallablePackage(types.ModuleType):
    """A package whose call runs the function `make_callable` gave it."""

    _call_target: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call_target(*args, **kwargs)


def make_callable(module_name: str, target: Callable[..., Any]) -> None:
    """Calling the (already imported) module `module_name` calls `target`."""
    module = sys.modules[module_name]
    module.__class__ = CallablePackage
    module._call_target = target
