"""The ``midprobe`` command: one entry point to every stage (``midprobe --help``)."""
