"""aekit: audio -> log-Mel features -> autoencoder -> verdict, as a library.

Every ``ae-*`` command is a thin wrapper over functions in this package, so
everything the commands do can also be done from Python or a notebook.
"""

__version__ = "0.1.0"
