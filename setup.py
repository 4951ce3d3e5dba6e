"""Build script: the Cython core of ``_fastcore``.

Every ``_fastcore/_*.pyx`` becomes the extension ``_fastcore._*``.  A failed
compile fails the build: there is no silent fallback at build time.  Set
``POSSWITCH_NO_EXTENSIONS=1`` to build and install without the compiled core
(the pure-Python twins are then used at run time).  ``POSSWITCH_DEBUG=1``
builds with annotations, bounds checks and line tracing.
"""

from __future__ import annotations

import os
import sys
from glob import glob

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("POSSWITCH_NO_EXTENSIONS"))
#: C libraries a module links against (headers from Debian's -dev packages, scripts/apt-packages.txt)
LIBRARIES: dict[str, list[str]] = {"_fastcore._sqlbatch": ["sqlite3"]}
DEBUG = bool(os.environ.get("POSSWITCH_DEBUG"))


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        print("*** posswitch: POSSWITCH_NO_EXTENSIONS set, building the pure-Python core only ***")
        return []
    from Cython.Build import cythonize  # build requirement; ImportError here is a real error

    modules = []
    for pyx in sorted(glob(os.path.join("_fastcore", "_*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        modules.append(
            Extension(
                name,
                [pyx],
                libraries=LIBRARIES.get(name, []),
                extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
                define_macros=[("FASTCORE_DEBUG", "1" if DEBUG else "0")],
            )
        )
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "cdivision": True,
        "initializedcheck": DEBUG,
        "embedsignature": True,
        "linetrace": DEBUG,
    }
    print(f"*** posswitch: compiling {len(modules)} Cython module(s) of _fastcore ***")
    return cythonize(modules, compiler_directives=directives, annotate=DEBUG, quiet=True)


setup(ext_modules=extensions())
if not NO_EXTENSIONS:
    sys.stdout.flush()
