"""Sockets, threads, readiness polling, processes and signals: everything that does I/O."""
