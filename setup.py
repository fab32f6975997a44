"""The one part of the build pyproject.toml cannot declare: the optional compiled packer.

vtibgp.kernel._fastpack packs the writer's usual route requests in C. It is optional: where
no C compiler or Python headers exist the build goes on without it and the writer packs in
Python (same bytes, about half the speed; `vtibgp doctor` and the writer's log say which)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("vtibgp.kernel._fastpack", ["vtibgp/kernel/_fastpack.c"],
                             optional=True)])
