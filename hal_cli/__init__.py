"""The ``hal`` command line and local servers: the process entry points people run."""
