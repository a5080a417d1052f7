"""The ``ae-*`` command-line programs: one thin click module per command.

Each module parses options, calls the library (:mod:`aekit`), writes, returns.
Shared options, logging, progress and error translation live in
:mod:`aekit.cmds.common`.
"""
