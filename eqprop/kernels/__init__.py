"""Compiled (C) kernels for the hot paths torch ops run badly; each has a torch fallback."""
